"""The Celery application of the worker: ``celery -A worker.app worker --concurrency 1``.

Configuration comes from :func:`core.jobs.queue.celery_config` (shared with the API, which sends tasks by
name). The per-process :class:`core.jobs.execute.WorkerContext` (store, Redis, model cache) is built on
first use inside the worker process, so CUDA is initialised in the child, never in a forking parent.
"""

from __future__ import annotations

import logging

from celery import Celery

from core.jobs.queue import make_celery
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app with the job tasks registered, configured from ``settings`` (default: the environment)."""
    from worker import tasks

    settings = settings or get_settings()
    app = make_celery(settings, main="cdp-worker")
    app.cdp_settings = settings  # type: ignore[attr-defined]
    tasks.register(app)
    return app


def __getattr__(name: str) -> Celery:
    # `celery -A worker.app` looks up `app` (or `celery`); build it lazily so importing this module is free.
    if name in ("app", "celery"):
        global app
        app = create_app()
        return app
    raise AttributeError(name)
