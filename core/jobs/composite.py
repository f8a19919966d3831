"""Progress of composite work (an experiment's child jobs, a pipeline's steps), counted in units.

A unit is what one task runs: a generation job has one per shard plus its finalize step, a training or
evaluation job one, an experiment the units of all the children it will have (known from its spec before
they exist). A composite's fraction is the units' fractions summed (a finished child counts whole, a
running one by its live progress) over the units it will run; ``current`` counts the units of finished
children. The API computes it when it is read (so it moves while a child runs), the experiment step when a
child finishes. No torch here: the API uses it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

from core.jobs.errors import JobNotFound
from core.jobs.records import JobRepository
from core.progress import Stage
from core.specs import GenerateSpec, JobRecord, Progress


def child_id(parent_id: str, key: str) -> str:
    """A child's job id: the parent's time prefix (children sort next to it) and 12 hex digits of a hash."""
    return parent_id[:12] + hashlib.sha256(f"{parent_id}/{key}".encode()).hexdigest()[:12]


def generation_key(spec: GenerateSpec) -> str:
    """The child key of a generation: its spec's digest, so identical specs across arms run once."""
    return "generate/" + hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Part:
    """One job a composite will run: its id, kind and how many units it counts for."""

    job_id: str
    kind: str
    units: int


def generation_units(count: int, shard_size: int) -> int:
    return math.ceil(count / max(1, shard_size)) + 1  # the shards and the finalize step


def experiment_parts(record: JobRecord, shard_size: int) -> list[Part]:
    """Every child an experiment will have (some not created yet), from its spec."""
    spec = record.experiment_spec()
    parts: dict[str, Part] = {}
    for arm in spec.arms:
        generation = spec.child_generate_spec(arm)
        if generation is not None:
            job_id = child_id(record.id, generation_key(generation))
            parts[job_id] = Part(job_id, "generate", generation_units(generation.count, shard_size))
        for seed in spec.seeds:
            for step, kind in (("train", "train"), ("evaluate", "evaluate")):
                job_id = child_id(record.id, f"{arm.name}/{seed}/{step}")
                parts[job_id] = Part(job_id, kind, 1)
    return list(parts.values())


def units_of(record: JobRecord, shard_size: int) -> int:
    """How many units a job counts for in a composite above it."""
    if record.kind == "generate":
        return (record.plan.shards or math.ceil(int(record.input["count"]) / max(1, shard_size))) + 1
    if record.kind == "experiment":
        return sum(p.units for p in experiment_parts(record, record.plan.shard_size or shard_size))
    return 1


def _fraction(repo: JobRepository, record: JobRecord, shard_size: int) -> float:
    if record.status == "succeeded":
        return 1.0
    if record.kind == "experiment" and not record.terminal:
        return composite_progress(repo, experiment_parts(record, shard_size)).fraction
    return record.progress.fraction if record.status == "running" else 0.0


def composite_progress(repo: JobRepository, parts: Iterable[Part], *, shard_size: int = 1000,
                       children: dict[str, JobRecord] | None = None) -> Progress:
    """The progress of ``parts`` together (children that do not exist yet count as not started)."""
    parts = list(parts)
    total = sum(p.units for p in parts) or 1
    done_units, weighted, finished, running = 0, 0.0, 0, 0
    for part in parts:
        child = (children or {}).get(part.job_id)
        if child is None:
            try:
                child = repo.get(part.job_id)
            except JobNotFound:
                continue
        if child.terminal:
            done_units += part.units
            finished += 1
        elif child.status == "running":
            running += 1
        weighted += part.units * _fraction(repo, child, shard_size)
    fraction = min(0.99, weighted / total) if finished < len(parts) else 1.0
    return Progress(fraction=round(fraction, 4), current=done_units, total=total, stage=Stage.CHILDREN,
                    message=f"{finished} of {len(parts)} jobs finished, {running} running "
                            f"({done_units} of {total} units)")


def experiment_progress(repo: JobRepository, record: JobRecord, shard_size: int = 1000) -> Progress:
    return composite_progress(repo, experiment_parts(record, record.plan.shard_size or shard_size),
                              shard_size=shard_size)


def child_states(repo: JobRepository, parts: Iterable[Part]) -> list[dict[str, object]]:
    """What an events stream reports of a composite's children: id, kind, status and stage of each that
    exists."""
    states = []
    for part in parts:
        try:
            child = repo.get(part.job_id)
        except JobNotFound:
            continue
        states.append({"id": child.id, "kind": child.kind, "status": child.status,
                       "stage": child.progress.stage, "fraction": round(child.progress.fraction, 3),
                       "error": child.error})
    return states
