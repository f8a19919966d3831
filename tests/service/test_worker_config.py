"""The Celery configuration REFERENCE §6 asks for, and the task names shared between API and worker."""

from __future__ import annotations

import pytest

from core.jobs import task_names
from core.settings import Settings


def test_worker_app_is_configured_for_at_least_once_delivery(settings: Settings) -> None:
    from worker.app import create_app

    app = create_app(settings)
    conf = app.conf
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    for options in (conf.broker_transport_options, conf.result_backend_transport_options):
        assert options["visibility_timeout"] == settings.visibility_timeout_s > conf.task_time_limit
    assert conf.broker_url == settings.redis_url == conf.result_backend
    registered = {name for name in app.tasks if name.startswith("cdp.")}
    assert registered == set(task_names.ALL_TASKS)


def test_settings_refuse_a_visibility_timeout_below_the_task_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="visibility_timeout_s=100 must exceed task_time_limit_s=200"):
        Settings(visibility_timeout_s=100, task_time_limit_s=200)
