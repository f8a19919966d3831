"""Celery configuration shared by the API (which only sends tasks by name) and worker/ (which runs them).

Delivery is at-least-once (``task_acks_late``; a message whose worker died is requeued,
``task_reject_on_worker_lost``), one message at a time per process (prefetch 1). Recovery from a dead worker
does not wait for Redis's visibility timeout: every unit holds a lease (:mod:`core.jobs.leases`) and the
reconciler re-enqueues a unit whose lease expired (:mod:`core.jobs.reconcile`), so a message redelivered
while its unit is still running finds the lease held and does nothing. The visibility timeout stays as a
backstop for a message lost between delivery and lease. The reconciler runs every
``CDP_RECONCILE_INTERVAL_S`` from Celery beat, on its own queue (``cdp.control``) so that long work never
delays it. The attempt cap that stops a poisonous unit from looping lives in the stored job record
(:meth:`core.jobs.records.JobRepository.count_attempt`).

Queues per kind of work: generation units (shards, finalize) go to ``cdp.generate``, training to
``cdp.train``, evaluations to ``cdp.evaluate``, the reconciler and experiment steps (short coordination)
to ``cdp.control``; a worker serves the queues named in ``CDP_WORKER_QUEUES`` (or Celery's ``-Q``), so a
day-long training job never sits in front of a generation job that a generate-queue worker serves. Within a
queue a job's ``priority`` (low / normal / high) orders the messages: kombu's Redis transport keeps one list
per priority step (``priority_steps``) and a worker's BRPOP reads the lists in step order, 0 first.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery

from core.jobs import task_names
from core.jobs.leases import UnitLeases
from core.settings import Settings
from core.specs import JobPriority

GENERATE_QUEUE = "cdp.generate"
TRAIN_QUEUE = "cdp.train"
EVALUATE_QUEUE = "cdp.evaluate"
CONTROL_QUEUE = "cdp.control"  # reconciler and experiment steps: served by the process that runs Celery beat
WORK_QUEUES: tuple[str, ...] = (GENERATE_QUEUE, TRAIN_QUEUE, EVALUATE_QUEUE)
# The queue of each task: Celery's own routing (task_routes) and the enqueuer both read this.
TASK_QUEUES: dict[str, str] = {
    task_names.GENERATE_SHARD: GENERATE_QUEUE, task_names.FINALIZE_GENERATION: GENERATE_QUEUE,
    task_names.TRAIN: TRAIN_QUEUE, task_names.EVALUATE: EVALUATE_QUEUE,
    task_names.EXPERIMENT_STEP: CONTROL_QUEUE, task_names.RECONCILE: CONTROL_QUEUE,
}  # fmt: skip

Priority = JobPriority
# Message priority per job priority. kombu's Redis transport reads priority 0 first (its lists are
# "<queue>", "<queue>\x06\x163", "<queue>\x06\x166", "<queue>\x06\x169"), the reverse of AMQP.
PRIORITY_STEPS = [0, 3, 6, 9]
MESSAGE_PRIORITY: dict[str, int] = {"high": 0, "normal": 3, "low": 6}
PRIORITY_SEPARATOR = "\x06\x16"


def queue_keys(queue: str) -> list[str]:
    """The Redis lists holding ``queue``'s messages, one per priority step (for depth metrics and tests)."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    broker_transport = {**transport, "priority_steps": PRIORITY_STEPS, "sep": PRIORITY_SEPARATOR,
                        "queue_order_strategy": "priority"}  # fmt: skip
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": broker_transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Under prefork Celery enforces these too: the soft limit fails the job through the task's own error
        # path, the hard one kills the process a minute later. The cooperative deadline in the progress
        # callback (core.jobs.context) holds on every pool, the solo pool of `cdp up` included.
        "task_soft_time_limit": settings.task_time_limit_s,
        "task_time_limit": settings.task_time_limit_s + 60,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 24 * 3600,
        "task_default_queue": GENERATE_QUEUE,
        "task_default_priority": MESSAGE_PRIORITY["normal"],
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        # A publish to an unreachable Redis gives up after about a second: the API then answers 503.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.25,
                                      "interval_max": 0.5},
        "broker_connection_timeout": 2,
        "beat_schedule": {
            "reconcile": {"task": task_names.RECONCILE, "schedule": settings.reconcile_interval_s,
                          "options": {"queue": CONTROL_QUEUE, "expires": settings.reconcile_interval_s}},
        },
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings, *, main: str = "cdp", read_results: bool = True) -> Celery:
    """The Celery app. ``read_results=False`` is for a producer that never reads task results (the API:
    job state lives in the store and Redis, not in Celery's result backend): without a result backend on
    this side, ``send_task`` no longer subscribes to each task's result channel (a SUBSCRIBE now and an
    UNSUBSCRIBE when the AsyncResult is collected, on a pub/sub connection per thread). The messages are
    the same, and the workers still store results as configured."""
    app = Celery(main)
    app.conf.update(celery_config(settings))
    if not read_results:
        app.conf.result_backend = None
    return app


def unit_task(job_id: str, unit: str) -> tuple[str, list[Any]]:
    """The task name and arguments that run one unit (``shard-<k>``, ``finalize`` or ``train``)."""
    if unit.startswith("shard-"):
        return task_names.GENERATE_SHARD, [job_id, int(unit.removeprefix("shard-"))]
    if unit == "finalize":
        return task_names.FINALIZE_GENERATION, [job_id]
    if unit == "train":
        return task_names.TRAIN, [job_id]
    if unit == "evaluate":
        return task_names.EVALUATE, [job_id]
    if unit == "experiment":
        return task_names.EXPERIMENT_STEP, [job_id]
    raise ValueError(f"unknown unit {unit!r}")


class Enqueuer:
    """Sends job tasks by name (the API never imports worker/) and marks each unit pending under the
    message's id (see :mod:`core.jobs.leases`). The message goes first: a send that fails leaves no pending
    mark behind, so the reconciler enqueues the unit again; a mark that fails after the send costs at most a
    duplicate message, which finds the unit done or leased and does nothing."""

    def __init__(self, app: Celery, leases: UnitLeases | None = None) -> None:
        self.app = app
        self.leases = leases

    def unit(self, job_id: str, unit: str, *, priority: Priority = "normal") -> str:
        name, args = unit_task(job_id, unit)
        message_id = uuid.uuid4().hex
        self.app.send_task(name, args=args, queue=TASK_QUEUES[name], task_id=message_id,
                           priority=MESSAGE_PRIORITY[priority])  # fmt: skip
        if self.leases is not None:
            self.leases.mark_pending(job_id, unit, message_id)
        return message_id

    def units(self, job_id: str, units: list[str], *, priority: Priority = "normal") -> None:
        for unit in units:
            self.unit(job_id, unit, priority=priority)


def job_priority(record: Any) -> Priority:
    """The priority a job record asked for (its spec's ``priority``; "normal" for older records)."""
    value = (getattr(record, "input", None) or {}).get("priority", "normal")
    return value if value in MESSAGE_PRIORITY else "normal"
