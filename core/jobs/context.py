"""What every unit of work of the worker shares: the per-process context, the model cache, the lease-guarded
run of one unit, and the progress callable that mirrors a unit's progress to the job record.

Delivery is at-least-once, so every unit is idempotent and runs under a lease (:mod:`core.jobs.leases`): a
message for a unit that another executor holds does nothing. The units themselves live beside this module:
generation shards and finalize in :mod:`core.jobs.generate`, training in :mod:`core.jobs.training`,
evaluations in :mod:`core.jobs.evaluate`, experiment steps in :mod:`core.jobs.experiment`.

Every unit runs inside :func:`run_unit`, which ends each way a unit can end in a defined state: done; the
job canceled (the progress callable checks the cancel flag between DDIM steps and epochs and raises
:class:`core.progress.Cancelled`); the job failed with its error (any exception of the job itself, the
time limit ``CDP_TASK_TIME_LIMIT_S`` checked in the progress callable, the attempt cap); or, when a
dependency failed (Redis unreachable, the store failing), the lease given up so that the reconciler hands
the unit on, counted as an attempt. Nothing is acknowledged and forgotten. Heavy imports (torch,
diffusers, the trainers) happen inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.jobs import keys
from core.jobs.artifacts import download_prefix
from core.jobs.dependencies import is_dependency_error
from core.jobs.errors import DeadlineExceeded, JobNotFound, LeaseLost
from core.jobs.leases import Lease
from core.jobs.queue import Enqueuer
from core.jobs.records import JobRepository
from core.jobs.registry import MODEL_REF, ref_id
from core.jobs.registry import model_prefix as registry_model_prefix
from core.progress import Cancelled, ProgressEvent, Stage
from core.specs import JobKind, JobRecord, JobStatus, Progress, job_id_of
from core.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """Everything a task needs, built once per worker process (see worker/tasks.py)."""

    repo: JobRepository
    store: ObjectStore
    enqueuer: Enqueuer
    model_dir: Path
    work_dir: Path
    data_root: Path
    device: str
    shard_size: int  # only for records written before plans froze the shard size
    max_attempts: int
    lease_renew_s: float = 5.0
    time_limit_s: float = 6 * 3600
    speed: Any = None  # core.diffusion.fast.SamplingSpeed for generation (None: the plain fp32 eager loop)
    tracking: Any = None  # core.jobs.tracking.TrackingConfig (None: no MLflow, no TensorBoard)
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    models: ModelCache = field(init=False)

    def __post_init__(self) -> None:
        self.models = ModelCache(self)


def unit_seed(seed: int, index: int) -> int:
    """An independent 63-bit seed per unit of a job (a generation shard, an evaluation chunk), derived from
    (job seed, unit index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


# --------------------------------------------------------------------------------------------- models
class ModelCache:
    """Loaded diffusion models and classifiers, kept per worker process (a few, least recently used out)."""

    def __init__(self, ctx: WorkerContext, *, capacity: int = 4) -> None:
        self.ctx = ctx
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def local_path(self, ref: str) -> Path:
        """A model directory on local disk: a model-dir entry, or a training job's output (downloaded)."""
        registered = ref_id(ref, MODEL_REF)
        if registered is not None:  # a model of the registry (POST /models)
            target = self.ctx.work_dir / "registered-models" / registered
            if not (target / ".complete").exists():
                download_prefix(self.ctx.store, registry_model_prefix(registered), target)
                (target / ".complete").write_text("ok")
            return target
        job_id = job_id_of(ref)
        if job_id is None:
            return self.ctx.model_dir / ref
        target = self.ctx.work_dir / "models" / job_id
        if not (target / ".complete").exists():
            download_prefix(self.ctx.store, keys.model_prefix(job_id), target)
            (target / ".complete").write_text("ok")
        return target

    def get(self, kind: str, ref: str) -> Any:
        key = (kind, ref)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        began = time.perf_counter()
        path = self.local_path(ref)
        if kind == "diffusion":
            from core.diffusion import load_diffusion_model

            model = load_diffusion_model(path, device=self.ctx.device)
        else:
            from core.models import load_classifier

            model = load_classifier(path, device=self.ctx.device)
        self._items[key] = model
        # once per model and worker process while the cache holds it (benchmarks/fanout.py counts these)
        log.info("loaded %s model %s in %.3f s", kind, ref, time.perf_counter() - began)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return model


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def run_unit(ctx: WorkerContext, job_id: str, unit: str, message_id: str,
             work: Callable[[JobRecord, Lease], str], *, count_attempts: bool = True) -> str:
    """Run one unit under its lease; returns what happened ("done", "skipped", "busy", "canceled",
    "failed", "lease-lost", "released"). A job that ends here and is a step of an experiment wakes its
    parent. ``count_attempts=False`` for an experiment's coordinating step, which runs many times."""
    outcome = _run_unit_once(ctx, job_id, unit, message_id, work, count_attempts=count_attempts)
    if outcome in ("done", "canceled", "failed"):
        _wake_parent(ctx, job_id)
    return outcome


def _wake_parent(ctx: WorkerContext, job_id: str) -> None:
    try:
        job = ctx.repo.get(job_id)
        if job.parent is not None and job.terminal:
            ctx.enqueuer.unit(job.parent, "experiment")
    except Exception as exc:  # the reconciler wakes it at its next pass anyway
        log.warning("job %s: could not wake its parent: %s", job_id, exc)


def _run_unit_once(ctx: WorkerContext, job_id: str, unit: str, message_id: str,
                   work: Callable[[JobRecord, Lease], str], *, count_attempts: bool) -> str:
    lease: Lease | None = None
    try:
        try:
            job = ctx.repo.get(job_id)
        except JobNotFound:  # e.g. a stale message from another store; nothing to do
            log.warning("task for unknown job %s ignored", job_id)
            return "skipped"
        if job.terminal or job.status == "waiting":  # a waiting job's units are sent when it is released
            return "skipped"
        if job.cancel_requested or ctx.repo.cancel_requested(job_id):
            ctx.repo.finish(job_id, "canceled")
            return "canceled"
        lease = ctx.repo.leases.acquire(job_id, unit, message_id=message_id, holder=ctx.holder)
        if lease is None:
            log.info("job %s: %s is held by %s; message %s dropped", job_id, unit,
                     ctx.repo.leases.holder(job_id, unit), message_id)
            return "busy"
        deadline = time.monotonic() + ctx.time_limit_s
        lease.start_heartbeat(ctx.lease_renew_s, deadline=deadline + ctx.repo.leases.ttl_ms / 1000)
        attempt = ctx.repo.count_attempt(job_id, unit) if count_attempts else 1
        if attempt > ctx.max_attempts:
            last = ctx.repo.unit_error(job_id, unit)
            ctx.repo.finish(job_id, "failed", error=f"{unit} was started {attempt} times (limit "
                            f"{ctx.max_attempts}); " + (f"last error: {last}" if last else
                                                          "its worker was lost each time"), refund=True)
            return "failed"
        log.info("job %s: %s started (attempt %d, lease %d, %s)", job_id, unit, attempt, lease.token,
                 ctx.holder)
        _UNIT.lease, _UNIT.deadline = lease, deadline
        try:
            return work(job, lease)
        finally:
            _UNIT.lease, _UNIT.deadline = None, None
    except Cancelled:
        return _settle(ctx, job_id, unit, lease, "canceled")
    except LeaseLost as exc:
        log.warning("job %s: %s", job_id, exc)
        return "lease-lost"
    except Exception as exc:
        if is_dependency_error(exc):
            if lease is None:  # this message still stands for the unit: the task retries it (worker/tasks.py)
                raise
            return _give_up(ctx, job_id, unit, exc)
        log.exception("job %s failed in %s", job_id, unit)
        return _settle(ctx, job_id, unit, lease, "failed", error=_error_text(exc))
    finally:
        if lease is not None:
            lease.release()


def _settle(ctx: WorkerContext, job_id: str, unit: str, lease: Lease | None, status: JobStatus, *,
            error: str | None = None) -> str:
    """Finish the job, unless this executor lost the unit meanwhile; a store that cannot take the final
    write makes the unit give up its lease instead (the next attempt meets the same error and writes it)."""
    try:
        if lease is not None:
            lease.check()
        ctx.repo.finish(job_id, status, error=error)
        return status
    except LeaseLost as exc:
        log.warning("job %s: %s", job_id, exc)
        return "lease-lost"
    except Exception as exc:
        if is_dependency_error(exc):
            return _give_up(ctx, job_id, unit, exc)
        raise


def _give_up(ctx: WorkerContext, job_id: str, unit: str, exc: BaseException) -> str:
    """A dependency failed: remember why and release the unit; the reconciler re-enqueues it."""
    text = _error_text(exc)
    log.warning("job %s: %s gives up its lease, a dependency failed (%s); the reconciler retries it",
                job_id, unit, text)
    ctx.repo.note_unit_error(job_id, unit, text)
    return "released"


class _UnitContext(threading.local):
    lease: Lease | None = None
    deadline: float | None = None


_UNIT = _UnitContext()  # the unit this thread runs: its progress callbacks check lease and deadline


# The share of one unit's progress that each stage fills, per kind of job, as (start, width): a stage at
# fraction f of itself puts the unit at start + width * f. A stage a kind does not list fills its default.
# Every JobKind has an entry (tests/test_progress.py checks); None: the kind runs no such units (an
# experiment's progress is its children's, core.jobs.composite).
UNIT_SPANS: dict[JobKind, tuple[dict[Stage, tuple[float, float]], tuple[float, float]] | None] = {
    "generate": ({Stage.SAMPLING: (0.0, 0.95)}, (0.95, 0.05)),  # then labelling
    # training steps (and the epoch ends between them) fill 0..90 %, the final evaluation the rest
    "train": ({Stage.TRAIN: (0.0, 0.9), Stage.CHECKPOINT: (0.0, 0.9), Stage.EPOCH: (0.0, 0.9)}, (0.9, 0.1)),
    "evaluate": ({}, (0.0, 0.98)),  # the last 2 % are the results table and the metrics
    "experiment": None,
}


def unit_fraction(kind: JobKind, event: ProgressEvent) -> float:
    """How far one unit of a ``kind`` job is, in [0, 1], after ``event``; ValueError for a kind that is not a
    key of :data:`UNIT_SPANS` or runs no units of its own."""
    if kind not in UNIT_SPANS:
        raise ValueError(f"unknown job kind {kind!r}; expected one of {', '.join(UNIT_SPANS)}")
    entry = UNIT_SPANS[kind]
    if entry is None:
        with_units = ", ".join(k for k, v in UNIT_SPANS.items() if v is not None)
        raise ValueError(f"job kind {kind!r} runs no units with their own progress (those that do: "
                         f"{with_units})")
    spans, default = entry
    start, width = spans.get(event.stage, default)
    return start + width * event.fraction


class JobProgress:
    """The core ProgressFn of one unit of work: checks lease, time limit and cancel flag, and mirrors the
    job's progress to Redis (at most every ``min_interval_s``, and at the end of each stage). The job's
    fraction is ``offset + scale * unit_fraction(kind, event)``: a generation shard is one of the job's
    shards. ``on_checkpoint`` runs on each CHECKPOINT event (a training unit uploads the checkpoint); those
    events are not mirrored, the EPOCH event after each one is."""

    def __init__(self, ctx: WorkerContext, job_id: str, kind: JobKind, *, offset: float = 0.0,
                 scale: float = 1.0, on_checkpoint: Callable[[], object] | None = None,
                 min_interval_s: float = 0.25) -> None:
        self.ctx, self.job_id, self.kind = ctx, job_id, kind
        self.offset, self.scale, self.on_checkpoint = offset, scale, on_checkpoint
        self.min_interval_s = min_interval_s
        self._last = 0.0

    def __call__(self, event: ProgressEvent, /) -> None:
        if event.stage == Stage.CHECKPOINT:
            if self.on_checkpoint is not None:
                self.on_checkpoint()
            return
        if _UNIT.lease is not None:
            _UNIT.lease.check()
        if _UNIT.deadline is not None and time.monotonic() > _UNIT.deadline:
            raise DeadlineExceeded(f"the unit ran longer than the time limit of {self.ctx.time_limit_s:g} s "
                                   "(CDP_TASK_TIME_LIMIT_S)")
        if self.ctx.repo.cancel_requested(self.job_id):
            raise Cancelled(f"job {self.job_id} was canceled")
        now = time.monotonic()
        if now - self._last < self.min_interval_s and event.current < event.total:
            return
        self._last = now
        fraction = min(1.0, max(0.0, self.offset + self.scale * unit_fraction(self.kind, event)))
        self.ctx.repo.set_progress(self.job_id, Progress(fraction=fraction, current=event.current,
                                                         total=event.total, stage=event.stage,
                                                         message=event.message))
