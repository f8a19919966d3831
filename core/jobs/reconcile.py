"""The reconciler: one periodic pass (Celery beat -> ``cdp.reconcile`` on the control queue, every
``CDP_RECONCILE_INTERVAL_S``) that makes Redis agree with the store, which is the source of truth.

For every job with an ``active/<id>`` marker in the store it reads the stored record and:

(a) re-enqueues each unfinished unit that has neither a live lease nor a pending message: its worker died
    (the lease expired), or Redis lost the queue. A unit whose worker was lost ``CDP_MAX_ATTEMPTS`` times
    fails the job with that reason instead of looping;
(b) rebuilds the Redis mirror of the record and its cancel flag after Redis lost its data (the units it then
    finds without state are re-enqueued by (a), queued jobs included);
(c) finishes as ``canceled`` a job whose cancel was requested once none of its units holds a live lease
    (its worker is gone, or it stopped between units);
(d) fails, with the cause, a job that cannot run: a spec that no longer validates against the limits frozen
    at submission, a ``job:<id>`` input that is missing or not succeeded, a named model missing from the
    model directory (checked only where that directory exists on the reconciler's host);
(e) settles a ``waiting`` job (:mod:`core.jobs.waiting`): queued and enqueued once its inputs have all
    succeeded, failed with the cause once one failed, canceled if that was asked; and re-adds it to its
    inputs' Redis sets of dependants. So a Redis flush or a worker killed between an input's end and the
    release of its dependants never strands one.

One pass at a time (a Redis lock); a second instance is harmless but idle. Unit done-ness comes from the
store alone: a shard is done when its object exists, ``finalize`` and ``train`` when the job is terminal.
No torch here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.jobs import keys
from core.jobs.dependencies import is_dependency_error
from core.jobs.errors import JobNotFound
from core.jobs.queue import Enqueuer, job_priority
from core.jobs.records import JobRepository
from core.jobs.registry import MODEL_REF, record_key
from core.jobs.registry import ref_id as registry_id
from core.specs import JobRecord, job_id_of

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    scanned: int = 0
    requeued: list[tuple[str, str]] = field(default_factory=list)  # (job id, unit)
    rebuilt: list[str] = field(default_factory=list)  # job ids whose Redis mirror was missing
    canceled: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # waiting jobs whose inputs had all succeeded
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: bool = False  # another pass held the lock

    def summary(self) -> dict[str, object]:
        return {"scanned": self.scanned, "requeued": [f"{j}/{u}" for j, u in self.requeued],
                "rebuilt": self.rebuilt, "canceled": self.canceled, "released": self.released,
                "failed": self.failed,
                "errors": self.errors, "skipped": self.skipped}


def shard_count(record: JobRecord, default_shard_size: int) -> int:
    """The frozen shard count (records written before plans existed: derived from the default size)."""
    if record.plan.shards:
        return record.plan.shards
    return math.ceil(int(record.input["count"]) / default_shard_size)


SINGLE_UNIT = {"train": "train", "evaluate": "evaluate", "experiment": "experiment"}


def initial_units(record: JobRecord, default_shard_size: int) -> list[str]:
    if record.kind in SINGLE_UNIT:
        return [SINGLE_UNIT[record.kind]]
    return [f"shard-{k}" for k in range(shard_count(record, default_shard_size))]


def unfinished_units(repo: JobRepository, record: JobRecord, default_shard_size: int) -> list[str]:
    """The units that still have to run, judged from the store alone."""
    if record.kind in SINGLE_UNIT:
        return [SINGLE_UNIT[record.kind]]
    prefix = keys.job_prefix(record.id) + "shards/"
    present = {info.key[len(prefix):] for info in repo.store.list(prefix)}
    n_shards = shard_count(record, default_shard_size)
    missing = [f"shard-{k}" for k in range(n_shards) if f"{k}.npz" not in present]
    return missing or ["finalize"]


_MODEL_FIELDS = ("model", "classifier", "judge", "feature_extractor")


def _experiment_refs(spec: Any) -> list[tuple[str, str | None]]:
    refs: list[tuple[str, str | None]] = []
    for a, arm in enumerate(spec.arms):
        refs += [(f"arms[{a}].synthetic[{i}]", ref) for i, ref in enumerate(arm.synthetic)]
    refs += [(f"arms[{a}].generate.{name}", getattr(arm.generate, name))
             for a, arm in enumerate(spec.arms) if arm.generate is not None for name in _MODEL_FIELDS]
    return refs


# The job and model references of each kind's spec (every JobKind: tests/service/test_reconcile.py checks).
REFERENCES: dict[str, Callable[[Any], list[tuple[str, str | None]]]] = {
    "generate": lambda spec: [(name, getattr(spec, name, None)) for name in _MODEL_FIELDS],
    "train": lambda spec: [(f"synthetic[{i}]", ref) for i, ref in enumerate(spec.synthetic)],
    "evaluate": lambda spec: [("model", spec.model)],
    "experiment": _experiment_refs,
}


def why_it_cannot_run(repo: JobRepository, record: JobRecord, model_dir: Path | None) -> str | None:
    """The reason a job can never succeed, or None. Looks only at what is certain (see (d) above)."""
    try:
        spec: Any = record.spec()
    except ValueError as exc:
        return f"its spec is no longer valid: {str(exc)[:300]}"
    refs = REFERENCES[record.kind](spec)
    for name, ref in refs:
        if ref is None:
            continue
        registered = registry_id(ref, MODEL_REF)
        if registered is not None:  # a registered model: its record must still be in the store
            if not repo.store.exists(record_key("models", registered)):
                return f"{name}: {ref} no longer exists"
            continue
        ref_id = job_id_of(ref)
        if ref_id is None:
            if model_dir is not None and model_dir.is_dir() and not (model_dir / ref).is_dir():
                return f"{name}: no model named {ref!r} in the model directory"
            continue
        try:
            source = repo.load(ref_id)
        except JobNotFound:
            return f"{name}: {ref} no longer exists"
        if source.status != "succeeded":
            return f"{name}: {ref} is {source.status}, not succeeded"
    return None


def reconcile(repo: JobRepository, enqueuer: Enqueuer, *, max_attempts: int, default_shard_size: int,
              model_dir: Path | None = None, lock_timeout_s: float = 300.0) -> ReconcileReport:
    """One pass over the active jobs (see the module docstring). Errors of single jobs are logged and
    reported, never raised, so one bad record cannot stop the others from being reconciled."""
    report = ReconcileReport()
    lock = repo.reconcile_lock(lock_timeout_s)
    if not lock.acquire(blocking=False):
        report.skipped = True
        return report
    started = time.monotonic()
    try:
        for job_id in list(repo.active_ids()):
            report.scanned += 1
            try:
                _reconcile_job(repo, enqueuer, job_id, report, max_attempts=max_attempts,
                               default_shard_size=default_shard_size, model_dir=model_dir)
            except Exception as exc:
                if not is_dependency_error(exc):
                    log.exception("reconcile: job %s", job_id)
                report.errors.append(f"{job_id}: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        try:
            lock.release()
        except Exception:  # expired, or Redis went away: the lock times out by itself
            pass
    if report.requeued or report.rebuilt or report.canceled or report.failed or report.released:
        log.info("reconcile: %s in %.2f s", report.summary(), time.monotonic() - started)
    return report


def _reconcile_job(repo: JobRepository, enqueuer: Enqueuer, job_id: str, report: ReconcileReport, *,
                   max_attempts: int, default_shard_size: int, model_dir: Path | None) -> None:
    try:
        record = repo.load(job_id)
    except JobNotFound:  # a marker left by a submission that was undone
        repo.deactivate(job_id)
        return
    if record.terminal:
        repo.deactivate(job_id)
        return
    if repo.restore_mirror(record):
        report.rebuilt.append(job_id)
    if record.status == "waiting":  # (e): settle it from its inputs' stored records
        _reconcile_waiting(repo, enqueuer, record, report, default_shard_size=default_shard_size)
        return
    units = unfinished_units(repo, record, default_shard_size)
    states = repo.leases.states(job_id, units)
    busy = any(state.leased for state in states.values())

    if record.cancel_requested or repo.cancel_requested(job_id):
        if not busy:
            repo.finish(job_id, "canceled")
            report.canceled.append(job_id)
        return
    reason = why_it_cannot_run(repo, record, model_dir)
    if reason is not None:
        if not busy:
            repo.finish(job_id, "failed", error=f"the job cannot run: {reason}")
            report.failed.append(job_id)
        return
    for unit in units:
        state = states[unit]
        if state.leased or state.pending:
            continue
        if state.taken:  # started, and its lease is gone: the executor died or gave up
            attempts = record.attempts.get(unit, 0)
            if attempts >= max_attempts:  # never the caller's fault: its quota charges are refunded
                last = repo.unit_error(job_id, unit)
                cause = f"; last error: {last}" if last else "; its worker was lost each time (lease expired)"
                repo.finish(job_id, "failed", error=f"{unit} was started {attempts} times (limit "
                                                    f"{max_attempts}){cause}", refund=True)
                report.failed.append(job_id)
                return
        enqueuer.unit(job_id, unit, priority=job_priority(record))  # to its kind's queue
        report.requeued.append((job_id, unit))


def _reconcile_waiting(repo: JobRepository, enqueuer: Enqueuer, record: JobRecord, report: ReconcileReport,
                       *, default_shard_size: int) -> None:
    from core.jobs import waiting

    if record.cancel_requested or repo.cancel_requested(record.id):
        repo.finish(record.id, "canceled")
        report.canceled.append(record.id)
        return
    waiting.restore(repo, record)
    outcome = waiting.settle(repo, enqueuer, record.id, default_shard_size)
    if outcome == "released":
        report.released.append(record.id)
    elif outcome == "failed":
        report.failed.append(record.id)
