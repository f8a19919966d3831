"""Thin Celery tasks: each deserialises ids, calls one function of :mod:`core.jobs.execute`, and returns a
short string. They pass ids, never tensors; the functions they call are idempotent (at-least-once delivery).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery

from core.jobs import task_names
from core.jobs.execute import WorkerContext, run_finalize, run_generate_shard, run_train
from core.jobs.queue import Enqueuer
from core.jobs.records import JobRepository
from core.settings import Settings
from core.storage import store_from_settings
from core.training.common import resolve_device

log = logging.getLogger(__name__)


def context(app: Celery) -> WorkerContext:
    """The worker process's context, built on first use (after the fork, so CUDA starts in the child)."""
    ctx: WorkerContext | None = getattr(app, "_cdp_context", None)
    if ctx is None:
        settings: Settings = app.cdp_settings  # type: ignore[attr-defined]
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        store = store_from_settings(settings)
        ctx = WorkerContext(
            repo=JobRepository(store, client), store=store, enqueuer=Enqueuer(app),
            model_dir=settings.model_dir, work_dir=settings.work_dir, data_root=settings.data_root,
            device=str(resolve_device(settings.device)), shard_size=settings.shard_size,
            max_attempts=settings.max_attempts,
        )
        app._cdp_context = ctx  # type: ignore[attr-defined]
    return ctx


def register(app: Celery) -> dict[str, Any]:
    @app.task(name=task_names.GENERATE_SHARD, bind=True)
    def generate_shard(self: Any, job_id: str, shard: int) -> str:
        return run_generate_shard(context(self.app), job_id, int(shard))

    @app.task(name=task_names.FINALIZE_GENERATION, bind=True)
    def finalize_generation(self: Any, job_id: str) -> str:
        return run_finalize(context(self.app), job_id)

    @app.task(name=task_names.TRAIN, bind=True)
    def train(self: Any, job_id: str) -> str:
        return run_train(context(self.app), job_id)

    return {"generate_shard": generate_shard, "finalize_generation": finalize_generation, "train": train}
