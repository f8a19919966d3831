"""Pipelines (``POST /pipelines``): every step submitted at once as a job with dependencies, and the view of
a pipeline computed from its steps' jobs when it is read. No torch here: the API uses it.

Submission validates every step first (``step:<name>`` resolved to the job id reserved for that step, then
the kind's spec model), so a bad step 7 submits nothing; then it submits the steps in order through
:class:`core.jobs.service.JobService` (reference checks, quotas and the waiting of :mod:`core.jobs.waiting`
apply to each), and if one is refused (a reference of the wrong kind, a quota) cancels those already
submitted. The pipeline document ``pipelines/<id>.json`` (owner, step names and their job ids) is written
last. The pipeline holds no state of its own: its status and progress are its steps' (so nothing of it can
be stranded), and canceling it cancels every unfinished step. An ``Idempotency-Key`` is bound to the first
step's job, from whose id the pipeline's derives: a replay returns the same pipeline.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError

from core.jobs.composite import Part, child_id, composite_progress, units_of
from core.jobs.errors import IdempotencyBusy, InvalidReference, JobNotFound, PipelineInvalid
from core.jobs.idempotency import body_digest
from core.jobs.records import JobRepository, get_json, new_job_id, put_json, utcnow
from core.jobs.service import JobService
from core.specs import EvaluateSpec, ExperimentSpec, GenerateSpec, JobRecord, TrainSpec
from core.specs.pipeline import (
    PipelineRecord,
    PipelineSpec,
    PipelineStepState,
    StepReferenceError,
    resolve_steps,
)
from core.storage import ObjectNotFound

log = logging.getLogger(__name__)

SPEC_MODELS: dict[str, Any] = {"train": TrainSpec, "generate": GenerateSpec, "evaluate": EvaluateSpec,
                               "experiment": ExperimentSpec}


def pipeline_key(pipeline_id: str) -> str:
    return f"pipelines/{pipeline_id}.json"


def pipeline_id_for(first_step_id: str) -> str:
    """A pipeline's id, derived from its first step's job id (sorts next to it; replays find it)."""
    return child_id(first_step_id, "pipeline")


def submit_pipeline(service: JobService, spec: PipelineSpec, *, owner: str,
                    idempotency_key: str | None = None) -> dict[str, Any]:
    """Submit every step; returns the stored pipeline document. With ``idempotency_key`` the key is bound
    to the first step's job (the pipeline's id derives from it), so a replay returns the same pipeline and
    a different body with the same key is an IdempotencyConflict."""
    job_ids: dict[str, str] = {}
    typed: list[tuple[int, str, str, Any]] = []
    errors: list[dict[str, Any]] = []
    for i, step in enumerate(spec.steps):
        loc: tuple[str | int, ...] = ("steps", i, "spec")
        job_id = new_job_id()
        try:
            body = resolve_steps(step.spec, job_ids, loc)
            typed.append((i, step.kind, job_id, SPEC_MODELS[step.kind].model_validate(body)))
        except StepReferenceError as exc:
            errors.append({"loc": exc.loc, "msg": exc.message, "type": "step_reference"})
        except ValidationError as exc:  # the spec's schema depends on the step's kind: a rule between fields
            errors += [{"loc": (*loc, *error["loc"]), "msg": error["msg"], "type": "cross_field"}
                       for error in exc.errors()]
        job_ids[step.name] = job_id
    if errors:
        raise PipelineInvalid(errors)
    first_id = typed[0][2]
    claimed = None
    if idempotency_key is not None:
        claimed = f"pipelines\n{idempotency_key}"  # apart from the jobs' keys (a header has no newline)
        digest = body_digest("pipeline", spec.model_dump(mode="json"))
        claim = service.repo.idempotency.claim(owner, claimed, digest, first_id)
        if not claim.created:
            return _replayed(service.repo, pipeline_id_for(claim.job_id), owner)
    submitted: list[str] = []
    try:
        for i, kind, job_id, step_spec in typed:
            try:
                record, _ = getattr(service, f"submit_{kind}")(step_spec, owner=owner, job_id=job_id)
            except InvalidReference as exc:
                raise InvalidReference(("steps", i, "spec", *exc.loc), exc.message) from None
            submitted.append(record.id)
        pipeline_id = pipeline_id_for(first_id)
        steps = [{"name": s.name, "kind": s.kind, "job_id": job_ids[s.name]} for s in spec.steps]
        document = {"id": pipeline_id, "owner": owner, "name": spec.name,
                    "created_at": utcnow().isoformat(), "steps": steps}
        put_json(service.repo.store, pipeline_key(pipeline_id), document)
    except BaseException:
        for job_id in submitted:  # nothing half-submitted keeps running
            try:
                service.cancel(job_id, owner=owner)
            except Exception as exc:
                log.warning("pipeline step %s: could not cancel it: %s", job_id, exc)
        if claimed is not None:
            service.repo.idempotency.release(owner, claimed, first_id)
        raise
    log.info("pipeline %s: %d steps submitted", pipeline_id, len(submitted))
    return document


def _replayed(repo: JobRepository, pipeline_id: str, owner: str, *, wait_s: float = 10.0) -> dict[str, Any]:
    """The pipeline an earlier request with the same key made (its steps may still be being submitted)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return load_pipeline(repo, pipeline_id, owner)
        except JobNotFound:
            if time.monotonic() > deadline:
                raise IdempotencyBusy("a request with this Idempotency-Key is still being "
                                      "processed") from None
            time.sleep(0.05)


def load_pipeline(repo: JobRepository, pipeline_id: str, owner: str | None) -> dict[str, Any]:
    """The stored document; JobNotFound if missing or another owner's."""
    try:
        document = get_json(repo.store, pipeline_key(pipeline_id))
    except ObjectNotFound:
        raise JobNotFound(pipeline_id) from None
    if owner is not None and document["owner"] != owner:
        raise JobNotFound(pipeline_id)
    return document


def pipeline_view(repo: JobRepository, pipeline_id: str, owner: str | None,
                  shard_size: int) -> PipelineRecord:
    document = load_pipeline(repo, pipeline_id, owner)
    names = {s["job_id"]: s["name"] for s in document["steps"]}
    records: dict[str, JobRecord] = {}
    states: list[PipelineStepState] = []
    for step in document["steps"]:
        try:
            job = records[step["job_id"]] = repo.get(step["job_id"])
        except JobNotFound:  # a step whose record is gone (cannot happen short of a deleted store object)
            states.append(PipelineStepState(name=step["name"], kind=step["kind"], job_id=step["job_id"],
                                            status="failed", error="its job record is missing"))
            continue
        if job.kind == "experiment" and job.status == "running":
            from core.jobs.composite import experiment_progress

            job.progress = experiment_progress(repo, job, shard_size)
        states.append(PipelineStepState(
            name=step["name"], kind=step["kind"], job_id=job.id, status=job.status,
            waiting_for=[names.get(i, i) for i in job.waiting_for], progress=job.progress.model_dump(),
            error=job.error))
    parts = [Part(s.job_id, s.kind, units_of(records[s.job_id], shard_size) if s.job_id in records else 1)
             for s in states]
    progress = composite_progress(repo, parts, shard_size=shard_size, children=records)
    statuses = {s.status for s in states}
    ended = [s for s in states if s.status in ("failed", "canceled")]
    if statuses == {"succeeded"}:
        status = "succeeded"
    elif statuses <= {"succeeded", "failed", "canceled"}:
        status = "failed" if any(s.status == "failed" for s in ended) else "canceled"
    elif statuses & {"running", "succeeded", "failed", "canceled"}:
        status = "running"
    else:
        status = "queued"
    error = "; ".join(f"step {s.name} (job {s.job_id}) {s.status}" + (f": {s.error}" if s.error else "")
                      for s in ended)[:2000] or None
    base = f"/pipelines/{pipeline_id}"
    return PipelineRecord(id=pipeline_id, name=document.get("name"), owner=document["owner"], status=status,
                          progress=progress.model_dump(), error=error, created_at=document["created_at"],
                          steps=states, links={"self": base, "events": f"{base}/events",
                                               "cancel": f"{base}/cancel"})


def cancel_pipeline(service: JobService, pipeline_id: str, *, owner: str | None) -> None:
    document = load_pipeline(service.repo, pipeline_id, owner)
    for step in document["steps"]:
        try:
            service.cancel(step["job_id"], owner=document["owner"])
        except JobNotFound:
            continue
