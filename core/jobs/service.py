"""Submitting, listing and cancelling jobs: what the API calls. No torch, no worker imports.

A submission checks that every ``job:<id>`` reference names a finished job of the right kind owned by the
same caller (and that a model name exists in the model directory), honours the ``Idempotency-Key``, writes
the record, then enqueues the tasks by name.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.jobs.queue import Enqueuer
from core.jobs.records import JobNotFound, JobRepository, new_job_id
from core.specs import GenerateSpec, JobRecord, TrainSpec, job_id_of

# Which finished jobs may stand in for which input.
_ACCEPTED_TRAIN_KINDS: dict[str, tuple[str, ...]] = {
    "model": ("diffusion",),
    "classifier": ("classifier", "trades"),
}


class InvalidReference(ValueError):
    """A ``job:<id>`` or model-name reference that cannot be used; ``loc`` is the field path."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


class IdempotencyConflict(ValueError):
    """The same Idempotency-Key was used with a different body."""


@dataclass
class JobService:
    repo: JobRepository
    enqueuer: Enqueuer
    model_dir: Path
    shard_size: int

    # --- submission ---
    def submit_generate(self, spec: GenerateSpec, *, owner: str, idempotency_key: str | None = None
                        ) -> tuple[JobRecord, bool]:
        """Returns (job, created). ``created`` is False when an idempotent replay returned an older job."""
        for field in ("model", "classifier"):
            self._check_model_ref((field,), getattr(spec, field), owner=owner,
                                  kinds=_ACCEPTED_TRAIN_KINDS[field])
        shards = math.ceil(spec.count / self.shard_size)
        return self._submit("generate", spec.model_dump(mode="json"), owner, idempotency_key,
                            lambda job_id: self.enqueuer.generate(job_id, shards))

    def submit_train(self, spec: TrainSpec, *, owner: str, idempotency_key: str | None = None
                     ) -> tuple[JobRecord, bool]:
        for i, ref in enumerate(spec.synthetic):
            self._check_job_ref(("synthetic", i), ref, owner=owner, kind="generate", train_kinds=None)
        return self._submit("train", spec.model_dump(mode="json"), owner, idempotency_key,
                            self.enqueuer.train)

    def _submit(self, kind: Literal["generate", "train"], body: dict, owner: str, key: str | None,
                enqueue) -> tuple[JobRecord, bool]:
        job_id = new_job_id()
        if key is not None:
            digest = hashlib.sha256(json.dumps([kind, body], sort_keys=True).encode()).hexdigest()
            try:
                existing = self.repo.idempotent_lookup(owner, key, digest)
                if existing is None:
                    existing = self.repo.idempotent_claim(owner, key, digest, job_id)
            except ValueError as exc:
                raise IdempotencyConflict(str(exc)) from None
            if existing != job_id:
                return self.repo.get(existing, owner=owner), False
        record = self.repo.create(kind=kind, owner=owner, input=body, job_id=job_id)
        enqueue(record.id)
        return record, True

    # --- references ---
    def _check_model_ref(self, loc: tuple[str | int, ...], ref: str, *, owner: str,
                         kinds: tuple[str, ...]) -> None:
        if job_id_of(ref) is not None:
            self._check_job_ref(loc, ref, owner=owner, kind="train", train_kinds=kinds)
            return
        if not (self.model_dir / ref).is_dir():
            raise InvalidReference(loc, f"{loc[0]}: no model named {ref!r} in the server's model directory")

    def _check_job_ref(self, loc: tuple[str | int, ...], ref: str, *, owner: str, kind: str,
                       train_kinds: tuple[str, ...] | None) -> None:
        job_id = job_id_of(ref)
        what = (f"a finished {'/'.join(train_kinds)} training job" if train_kinds
                else "a finished generation job")
        field = ".".join(str(p) for p in loc)
        try:
            job = self.repo.get(job_id or "", owner=owner)
        except JobNotFound:
            raise InvalidReference(loc, f"{field}: {ref} does not exist; it must be {what}") from None
        actual = job.kind if job.kind == "generate" else f"{job.input.get('kind')} training"
        if job.kind != kind or (train_kinds is not None and job.input.get("kind") not in train_kinds):
            raise InvalidReference(loc, f"{field}: {ref} is a {actual} job; it must be {what}")
        if job.status != "succeeded":
            raise InvalidReference(loc, f"{field}: {ref} is {job.status}, not succeeded; it must be {what}")
