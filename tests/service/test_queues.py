"""Queues per kind of work and job priorities on the Redis broker (core.jobs.queue)."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import redis

from core.jobs import task_names
from core.jobs.queue import GENERATE_QUEUE, TRAIN_QUEUE, Enqueuer, job_priority, make_celery, queue_keys
from core.settings import get_settings


def _waiting(redis_client: redis.Redis, queue: str) -> list[str]:
    """Task names of the messages waiting in ``queue`` (every priority list)."""
    return [json.loads(raw)["headers"]["task"] for key in queue_keys(queue)
            for raw in redis_client.lrange(key, 0, -1)]  # fmt: skip


def test_a_train_job_does_not_delay_a_generate_job_served_by_a_generate_queue_worker(
        stack_serving, redis_client: redis.Redis) -> None:
    # the only worker serves cdp.generate; a long training job submitted first waits on cdp.train (on one
    # shared queue that worker would take the training job first and the generation would wait behind it)
    with stack_serving([GENERATE_QUEUE]) as stack:
        client = stack.client
        train = client.post("/jobs/train", json={"kind": "diffusion", "dataset": "digits", "epochs": 400})
        assert train.status_code == 202, train.text
        generate = client.post("/jobs/generate", json={
            "dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 4, "steps": 2,
            "schedule": "uniform", "loss": "none", "batch_size": 4, "priority": "high"})
        assert generate.status_code == 202, generate.text
        done = stack.wait(generate.json()["id"], until={"succeeded", "failed"})
        assert done["status"] == "succeeded", done["error"]
        assert client.get(f"/jobs/{train.json()['id']}").json()["status"] == "queued"
        assert _waiting(redis_client, TRAIN_QUEUE) == [task_names.TRAIN]
        assert _waiting(redis_client, GENERATE_QUEUE) == []


def test_higher_priority_messages_are_delivered_first(service_env: dict[str, str],
                                                      redis_client: redis.Redis) -> None:
    """Measured on the Redis transport as configured: messages sent low, normal, high come out high,
    normal, low (the order a worker with prefetch 1 takes them in)."""
    get_settings.cache_clear()
    app = make_celery(get_settings())
    enqueuer = Enqueuer(app)
    sent = {priority: enqueuer.unit(f"job-{priority}", "train", priority=priority)  # type: ignore[arg-type]
            for priority in ("low", "normal", "high")}
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        order = []
        for _ in range(3):
            message = channel.basic_get(TRAIN_QUEUE)
            assert message is not None
            order.append(message.headers["id"])
    assert order == [sent["high"], sent["normal"], sent["low"]]


@pytest.mark.parametrize(("unit", "task", "queue", "priority", "message_priority"), [
    ("shard-2", task_names.GENERATE_SHARD, "cdp.generate", "low", 6),
    ("finalize", task_names.FINALIZE_GENERATION, "cdp.generate", "normal", 3),
    ("train", task_names.TRAIN, "cdp.train", "high", 0),
    ("evaluate", task_names.EVALUATE, "cdp.evaluate", "normal", 3),
    ("experiment", task_names.EXPERIMENT_STEP, "cdp.control", "normal", 3),
], ids=["shard", "finalize", "train", "evaluate", "experiment"])
def test_the_enqueuer_sends_each_unit_to_its_kinds_queue_with_the_jobs_priority(
        unit: str, task: str, queue: str, priority: str, message_priority: int) -> None:
    app = mock.Mock()
    message_id = Enqueuer(app).unit("job-1", unit, priority=priority)  # type: ignore[arg-type]
    args = ["job-1", 2] if unit == "shard-2" else ["job-1"]
    app.send_task.assert_called_once_with(task, args=args, queue=queue, task_id=message_id,
                                          priority=message_priority)  # fmt: skip


def test_a_job_priority_comes_from_its_spec() -> None:
    assert job_priority(mock.Mock(input={"priority": "high"})) == "high"
    assert job_priority(mock.Mock(input={})) == "normal"  # records from before priorities existed
