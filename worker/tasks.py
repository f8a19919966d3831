"""Thin Celery tasks: each deserialises ids, calls one unit's function of :mod:`core.jobs` (or the
reconciler), and returns a short string. They pass ids, never tensors; the functions they call are
idempotent (at-least-once delivery) and run each unit under a lease.

A dependency failing before a unit could take its lease (Redis unreachable, the store failing) retries the
same message with backoff (``self.retry``: the same task id, so the unit's pending mark stays true); once a
unit holds its lease, :func:`core.jobs.context.run_unit` handles every failure itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from core import logs
from core.jobs import task_names, waiting
from core.jobs.context import WorkerContext
from core.jobs.dependencies import is_dependency_error, redis_client
from core.jobs.generate import run_finalize, run_generate_shard, shard_size_of
from core.jobs.queue import Enqueuer
from core.jobs.reconcile import reconcile
from core.jobs.records import JobRepository
from core.jobs.training import run_train
from core.settings import Settings
from core.storage import store_from_settings
from worker import metrics

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_S = 30


def context(app: Celery) -> WorkerContext:
    """The worker process's context, built on first use (after the fork, so CUDA starts in the child)."""
    ctx: WorkerContext | None = getattr(app, "_cdp_context", None)
    if ctx is None:
        from core.diffusion.fast import SamplingSpeed
        from core.jobs.tracking import TrackingConfig
        from core.training.common import resolve_device

        settings: Settings = app.cdp_settings  # type: ignore[attr-defined]
        store = store_from_settings(settings)
        repo = JobRepository(store, redis_client(settings.redis_url), lease_ttl_s=settings.lease_ttl_s)
        enqueuer = Enqueuer(app, repo.leases)
        waiting.attach(repo, enqueuer, settings.shard_size)  # a job that ends settles its dependants
        ctx = WorkerContext(
            repo=repo, store=store, enqueuer=enqueuer,
            model_dir=settings.model_dir, work_dir=settings.work_dir, data_root=settings.data_root,
            device=str(resolve_device(settings.device)), shard_size=settings.shard_size,
            max_attempts=settings.max_attempts, lease_renew_s=settings.lease_renew_s,
            time_limit_s=settings.task_time_limit_s,
            speed=SamplingSpeed(compile=settings.compile, channels_last=settings.channels_last,
                                bf16=settings.bf16),
            tracking=TrackingConfig(mlflow_uri=settings.mlflow_tracking_uri,
                                    mlflow_experiment=settings.mlflow_experiment,
                                    tensorboard=settings.tensorboard),
        )
        app._cdp_context = ctx  # type: ignore[attr-defined]
    return ctx


def warm_up(app: Celery) -> None:
    """Build the context and import the sampling and training code before the first message, so a fresh
    worker (a pod KEDA just started) pays its cold start before it takes a unit, not inside one. Best effort:
    a dependency down now is met again, and handled, by the first task."""
    began = time.perf_counter()
    try:
        context(app)
        import core.generation  # noqa: F401  (torch, the DDIM loop, guidance)
        import core.models  # noqa: F401
    except Exception as exc:
        log.warning("worker warm-up failed (%s: %s); the first task builds its context",
                    type(exc).__name__, exc)
        return
    log.info("worker warmed up in %.2f s", time.perf_counter() - began)


def _reconciler_parts(app: Celery) -> tuple[JobRepository, Enqueuer, Settings]:
    """What the reconciler needs: no model cache, no torch (the control worker stays small)."""
    found = getattr(app, "_cdp_control", None)
    if found is None:
        settings: Settings = app.cdp_settings  # type: ignore[attr-defined]
        repo = JobRepository(store_from_settings(settings), redis_client(settings.redis_url),
                             lease_ttl_s=settings.lease_ttl_s)
        enqueuer = Enqueuer(app, repo.leases)
        found = (waiting.attach(repo, enqueuer, settings.shard_size), enqueuer, settings)
        app._cdp_control = found  # type: ignore[attr-defined]
    return found


def _observed(task: Any, job_id: str, unit: str, run: Callable[[], str]) -> str:
    """Run a unit with its log context bound (job_id, unit, owner, attempt, task_id) and its metrics
    observed. ``attempt`` is the start this is (the record's count for the unit, plus one)."""
    ctx = context(task.app)
    try:
        job = ctx.repo.get(job_id)
        owner, attempt = job.owner, job.attempts.get(unit, 0) + 1
    except Exception:  # a missing job or a dependency down: the unit itself reports it
        job, owner, attempt = None, None, None
    started = time.perf_counter()
    outcome = "error"
    with logs.bind(job_id=job_id, unit=unit, owner=owner, attempt=attempt, task_id=task.request.id):
        try:
            outcome = _retrying(task, run)
            return outcome
        finally:
            elapsed = time.perf_counter() - started
            metrics.UNIT_SECONDS.labels(task=task.name.rsplit(".", 1)[-1], outcome=outcome).observe(elapsed)
            if outcome == "failed":
                metrics.UNIT_FAILURES.labels(task=task.name.rsplit(".", 1)[-1]).inc()
            if outcome == "done" and job is not None and unit.startswith("shard-"):
                _count_images(ctx, job, int(unit.removeprefix("shard-")), elapsed)


def _count_images(ctx: WorkerContext, job: Any, shard: int, elapsed: float) -> None:
    spec = job.generate_spec()
    guided = spec.loss != "none"
    images = shard_size_of(job, spec, shard, ctx.shard_size)
    metrics.IMAGES_GENERATED.labels(dataset=spec.dataset, guided=str(guided).lower()).inc(images)
    if guided:
        metrics.GUIDED_STEP_SECONDS.observe(elapsed / spec.steps)


def _unit(task: Any, job_id: str, unit: str, run: Callable[..., str], *args: Any) -> str:
    """Run ``run(context, job_id, *args, message_id=<this message's id>)`` as ``unit``, observed."""
    return _observed(task, job_id, unit, lambda: run(context(task.app), job_id, *args,
                                                     message_id=task.request.id or "direct"))


def _retrying(task: Any, run: Callable[[], str]) -> str:
    try:
        return run()
    except Exception as exc:
        if not is_dependency_error(exc):
            raise
        countdown = min(RETRY_BACKOFF_MAX_S, 2 ** task.request.retries)
        log.warning("task %s: a dependency failed (%s: %s); retrying in %d s", task.request.id,
                    type(exc).__name__, exc, countdown)
        raise task.retry(exc=exc, countdown=countdown, max_retries=None) from None


def register(app: Celery) -> dict[str, Any]:
    @app.task(name=task_names.GENERATE_SHARD, bind=True)
    def generate_shard(self: Any, job_id: str, shard: int) -> str:
        return _unit(self, job_id, f"shard-{int(shard)}", run_generate_shard, int(shard))

    @app.task(name=task_names.FINALIZE_GENERATION, bind=True)
    def finalize_generation(self: Any, job_id: str) -> str:
        return _unit(self, job_id, "finalize", run_finalize)

    @app.task(name=task_names.TRAIN, bind=True)
    def train(self: Any, job_id: str) -> str:
        return _unit(self, job_id, "train", run_train)

    @app.task(name=task_names.EVALUATE, bind=True)
    def evaluate(self: Any, job_id: str) -> str:
        from core.jobs.evaluate import run_evaluate

        return _unit(self, job_id, "evaluate", run_evaluate)

    @app.task(name=task_names.EXPERIMENT_STEP, bind=True)
    def experiment_step(self: Any, job_id: str) -> str:
        from core.jobs.experiment import run_experiment

        return _unit(self, job_id, "experiment", run_experiment)

    @app.task(name=task_names.RECONCILE, bind=True, ignore_result=True)
    def reconcile_jobs(self: Any) -> dict[str, object]:
        repo, enqueuer, settings = _reconciler_parts(self.app)
        try:
            report = reconcile(repo, enqueuer, max_attempts=settings.max_attempts,
                               default_shard_size=settings.shard_size, model_dir=settings.model_dir,
                               lock_timeout_s=max(60.0, settings.reconcile_interval_s * 4))
        except Exception as exc:
            if not is_dependency_error(exc):
                raise
            log.warning("reconcile: a dependency is unavailable (%s: %s); next pass in %g s",
                        type(exc).__name__, exc, settings.reconcile_interval_s)
            return {"error": type(exc).__name__}
        summary = report.summary()
        metrics.LEASE_EXPIRIES.inc(len(report.requeued))
        return summary

    return {"generate_shard": generate_shard, "finalize_generation": finalize_generation, "train": train,
            "evaluate": evaluate, "experiment_step": experiment_step, "reconcile": reconcile_jobs}
