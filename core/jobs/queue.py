"""Celery configuration shared by the API (which only sends tasks by name) and worker/ (which runs them).

REFERENCE §6: delivery is at-least-once (``task_acks_late``; a message whose worker died is requeued,
``task_reject_on_worker_lost``), one message at a time per process (prefetch 1), and Redis's visibility
timeout above the longest task in both the broker and the result-backend transport options, or Redis hands
a still-running task to a second worker. The attempt cap that stops a poisonous task from looping lives in
the job record (:meth:`core.jobs.records.JobRepository.bump_attempt`).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.jobs import task_names
from core.settings import Settings

QUEUE = "cdp"


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": max(1, settings.task_time_limit_s - 60),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 24 * 3600,
        "task_default_queue": QUEUE,
        "task_routes": {name: {"queue": QUEUE} for name in task_names.ALL_TASKS},
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings, *, main: str = "cdp") -> Celery:
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app


class Enqueuer:
    """Sends job tasks by name; the API never imports worker/."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def generate(self, job_id: str, shards: int) -> None:
        for shard in range(shards):
            self.app.send_task(task_names.GENERATE_SHARD, args=[job_id, shard], queue=QUEUE)

    def finalize(self, job_id: str) -> None:
        self.app.send_task(task_names.FINALIZE_GENERATION, args=[job_id], queue=QUEUE)

    def train(self, job_id: str) -> None:
        self.app.send_task(task_names.TRAIN, args=[job_id], queue=QUEUE)
