"""The Celery application of the worker: ``celery -A worker.app worker --concurrency 1``.

Configuration comes from :func:`core.jobs.queue.celery_config` (shared with the API, which sends tasks by
name). The per-process :class:`core.jobs.context.WorkerContext` (store, Redis, model cache) is built on
first use inside the worker process, so CUDA is initialised in the child, never in a forking parent.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from core import logs
from core.jobs.queue import WORK_QUEUES, make_celery
from core.settings import Settings, get_settings
from worker import metrics

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app with the job tasks registered, configured from ``settings`` (default: the environment)."""
    from worker import tasks

    settings = settings or get_settings()
    app = make_celery(settings, main="cdp-worker")
    app.cdp_settings = settings  # type: ignore[attr-defined]
    # the queues this worker consumes unless Celery's -Q names others (Celery's own queue selection)
    app.amqp.queues.select(settings.worker_queues.split(","))
    tasks.register(app)
    _connect_signals(settings)
    return app


def _connect_signals(settings: Settings) -> None:
    """Logs in CDP_LOG_FORMAT on Celery's own handlers, the metrics exporter once the worker is ready, and
    the warm-up of a worker of units before its first message (:func:`worker.tasks.warm_up`).
    (Signals are process-wide: ``dispatch_uid`` keeps one receiver per kind however many apps are made.)"""
    from worker import tasks

    def format_logs(logger: logging.Logger, **_: object) -> None:
        logs.use_format_on(logger, settings.log_format)

    def start_exporter(**_: object) -> None:
        if settings.worker_metrics_port:
            metrics.start_exporter(settings.worker_metrics_port)

    def warm_main_process(sender: Any = None, **_: object) -> None:
        # solo and thread pools run tasks in this process; a prefork parent must not import CUDA (its
        # children warm up in worker_process_init instead)
        pool = type(getattr(sender, "pool", None)).__module__
        if _serves_work(sender) and not pool.endswith("prefork"):
            tasks.warm_up(sender.app)

    def warm_child(**_: object) -> None:
        from celery import current_app

        if _serves_work(None):
            tasks.warm_up(current_app)

    def child_exited(pid: int, **_: object) -> None:
        metrics.process_exited(pid)

    signals.after_setup_logger.connect(format_logs, weak=False, dispatch_uid="cdp-logs")
    signals.after_setup_task_logger.connect(format_logs, weak=False, dispatch_uid="cdp-task-logs")
    signals.worker_ready.connect(start_exporter, weak=False, dispatch_uid="cdp-metrics")
    signals.worker_process_shutdown.connect(child_exited, weak=False, dispatch_uid="cdp-metrics-exit")
    signals.worker_ready.connect(warm_main_process, weak=False, dispatch_uid="cdp-warm-up")
    signals.worker_process_init.connect(warm_child, weak=False, dispatch_uid="cdp-warm-up-child")


def _serves_work(consumer: Any) -> bool:
    """Whether this worker consumes a queue of units (generate, train, evaluate), not only cdp.control."""
    from celery import current_app

    app = consumer.app if consumer is not None else current_app
    return any(name in WORK_QUEUES for name in app.amqp.queues.consume_from or {})


def __getattr__(name: str) -> Celery:
    # `celery -A worker.app` looks up `app` (or `celery`); build it lazily so importing this module is free.
    if name in ("app", "celery"):
        global app
        app = create_app()
        return app
    raise AttributeError(name)
