"""The Celery configuration the service relies on, and the task names shared between API and worker."""

from __future__ import annotations

import pytest

from core.jobs import task_names
from core.jobs.queue import CONTROL_QUEUE, EVALUATE_QUEUE, GENERATE_QUEUE, TRAIN_QUEUE
from core.settings import Settings


def test_worker_app_is_configured_for_at_least_once_delivery(settings: Settings) -> None:
    from worker.app import create_app

    app = create_app(settings)
    conf = app.conf
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    for options in (conf.broker_transport_options, conf.result_backend_transport_options):
        assert options["visibility_timeout"] == settings.visibility_timeout_s
    assert conf.task_soft_time_limit == settings.task_time_limit_s < conf.task_time_limit
    assert conf.broker_url == settings.redis_url == conf.result_backend
    registered = {name for name in app.tasks if name.startswith("cdp.")}
    assert registered == set(task_names.ALL_TASKS)
    # the reconciler runs from beat on its own queue, once per interval, and never piles up
    entry = conf.beat_schedule["reconcile"]
    assert entry["task"] == task_names.RECONCILE and entry["schedule"] == settings.reconcile_interval_s
    assert entry["options"]["queue"] == CONTROL_QUEUE
    assert entry["options"]["expires"] == settings.reconcile_interval_s
    assert conf.task_routes[task_names.RECONCILE] == {"queue": CONTROL_QUEUE}
    # one queue per kind of work, so a worker can serve only some kinds
    assert conf.task_routes[task_names.GENERATE_SHARD] == {"queue": GENERATE_QUEUE}
    assert conf.task_routes[task_names.FINALIZE_GENERATION] == {"queue": GENERATE_QUEUE}
    assert conf.task_routes[task_names.TRAIN] == {"queue": TRAIN_QUEUE}
    assert conf.task_routes[task_names.EVALUATE] == {"queue": EVALUATE_QUEUE}
    assert conf.task_routes[task_names.EXPERIMENT_STEP] == {"queue": CONTROL_QUEUE}
    # Redis priority lists read in step order (0 first), messages without a priority are "normal"
    assert conf.broker_transport_options["queue_order_strategy"] == "priority"
    assert conf.task_default_priority == 3
    assert sorted(app.amqp.queues.consume_from) == sorted([GENERATE_QUEUE, TRAIN_QUEUE, EVALUATE_QUEUE])


def test_a_worker_serves_the_queues_its_setting_names() -> None:
    from worker.app import create_app

    app = create_app(Settings(worker_queues="cdp.train"))
    assert list(app.amqp.queues.consume_from) == [TRAIN_QUEUE]
    with pytest.raises(ValueError, match="worker_queues"):
        Settings(worker_queues="cdp.trian")


def test_settings_refuse_a_lease_renewed_too_rarely() -> None:
    with pytest.raises(ValueError, match="lease_renew_s=20.0 must be at most half of lease_ttl_s=30.0"):
        Settings(lease_renew_s=20, lease_ttl_s=30)
