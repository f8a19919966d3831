"""The reconciler in one process against a real Redis and a real local store: expired leases, a Redis that
lost its data, cancels whose worker is gone, jobs that cannot run. The enqueuer records what it sends."""

from __future__ import annotations

import time

import pytest
import redis

from core.jobs import keys
from core.jobs.reconcile import reconcile
from core.jobs.records import JobRepository
from core.settings import Settings
from core.specs import GenerateSpec, JobPlan, TrainSpec, server_limits
from core.storage import LocalStore
from tests.service.test_jobs_execute import RecordingEnqueuer


@pytest.fixture
def repo(store: LocalStore, redis_client: redis.Redis) -> JobRepository:
    return JobRepository(store, redis_client, lease_ttl_s=0.3)


def submit_generate(repo: JobRepository, enqueuer: RecordingEnqueuer, *, shards: int = 2, **spec) -> str:
    body = GenerateSpec(dataset="digits", model=spec.pop("model", "unet-t"), classifier="cnn-t",
                        count=4 * shards, **spec).model_dump(mode="json")
    job = repo.create(kind="generate", owner="o", input=body,
                      plan=JobPlan(shards=shards, shard_size=4, limits=server_limits()))
    enqueuer.units(job.id, [f"shard-{k}" for k in range(shards)])
    return job.id


def run(repo: JobRepository, enqueuer: RecordingEnqueuer, settings: Settings, **kw):
    return reconcile(repo, enqueuer, max_attempts=kw.pop("max_attempts", 3),
                     default_shard_size=settings.shard_size, model_dir=kw.pop("model_dir", None), **kw)


def test_queued_units_are_left_alone_and_an_expired_lease_is_requeued(repo, settings) -> None:
    enqueuer = RecordingEnqueuer(repo)
    job_id = submit_generate(repo, enqueuer)
    enqueuer.sent.clear()
    report = run(repo, enqueuer, settings)
    assert report.scanned == 1 and report.requeued == [] and enqueuer.sent == []

    lease = repo.leases.acquire(job_id, "shard-0", message_id="m", holder="w:1")  # a worker takes shard 0
    repo.count_attempt(job_id, "shard-0")
    assert run(repo, enqueuer, settings).requeued == []  # its lease is live
    del lease  # ... and the worker dies: nobody renews
    time.sleep(0.45)
    report = run(repo, enqueuer, settings)
    assert report.requeued == [(job_id, "shard-0")] and enqueuer.sent == [(job_id, "shard-0")]
    assert run(repo, enqueuer, settings).requeued == []  # now pending again: not sent twice


def test_a_unit_lost_at_the_attempt_cap_fails_the_job_with_the_reason(repo, settings) -> None:
    enqueuer = RecordingEnqueuer(repo)
    job_id = submit_generate(repo, enqueuer, shards=1)
    for attempt in range(2):
        assert repo.leases.acquire(job_id, "shard-0", message_id=f"m{attempt}", holder="w:1") is not None
        repo.count_attempt(job_id, "shard-0")
        time.sleep(0.45)
    report = run(repo, enqueuer, settings, max_attempts=2)
    assert report.failed == [job_id]
    job = repo.get(job_id)
    assert job.status == "failed" and "shard-0 was started 2 times" in job.error
    assert "lease expired" in job.error
    assert not repo.store.exists(keys.active_key(job_id))
    assert run(repo, enqueuer, settings).scanned == 0  # terminal jobs are out of the active index


def test_after_redis_lost_its_data_every_job_is_rebuilt_and_requeued(repo, settings, redis_client) -> None:
    enqueuer = RecordingEnqueuer(repo)
    running = submit_generate(repo, enqueuer, shards=2)
    repo.mark_running(running)
    repo.store.put_bytes(keys.shard_key(running, 0), b"done")  # shard 0 finished before the loss
    queued = submit_generate(repo, enqueuer, shards=1)
    train = repo.create(kind="train", owner="o", input=TrainSpec(kind="classifier", dataset="digits",
                                                                  epochs=1).model_dump(mode="json"))
    enqueuer.unit(train.id, "train")
    repo.request_cancel(queued)  # queued -> canceled at once: the reconciler has nothing to do for it
    canceling = submit_generate(repo, enqueuer, shards=1)
    repo.mark_running(canceling)
    repo.request_cancel(canceling)
    enqueuer.sent.clear()

    redis_client.flushall()  # Redis restarted empty
    report = run(repo, enqueuer, settings)
    assert sorted(report.rebuilt) == sorted([running, train.id, canceling])
    assert sorted(enqueuer.sent) == sorted([(running, "shard-1"), (train.id, "train")])
    assert report.canceled == [canceling]  # its cancel flag came back from the store, no unit is leased
    assert repo.get(running).status == "running"  # the mirror again serves the stored record
    assert redis_client.get(keys.redis_record(running)) is not None
    assert run(repo, enqueuer, settings).requeued == []


def test_all_shards_present_means_finalize_is_the_unit_to_run(repo, settings) -> None:
    enqueuer = RecordingEnqueuer(repo)
    job_id = submit_generate(repo, enqueuer, shards=2)
    for k in range(2):
        repo.store.put_bytes(keys.shard_key(job_id, k), b"x")
    enqueuer.sent.clear()
    assert run(repo, enqueuer, settings).requeued == [(job_id, "finalize")]


def test_a_cancel_whose_worker_is_gone_is_finished(repo, settings) -> None:
    enqueuer = RecordingEnqueuer(repo)
    job_id = submit_generate(repo, enqueuer, shards=1)
    repo.leases.acquire(job_id, "shard-0", message_id="m", holder="w:1")
    repo.mark_running(job_id)
    repo.request_cancel(job_id)
    assert run(repo, enqueuer, settings).canceled == []  # still leased: the worker may stop by itself
    time.sleep(0.45)
    assert run(repo, enqueuer, settings).canceled == [job_id]
    assert repo.get(job_id).status == "canceled"


def test_jobs_that_cannot_run_fail_with_their_cause(repo, settings, tmp_path) -> None:
    enqueuer = RecordingEnqueuer(repo)
    (settings.model_dir / "cnn-t").mkdir(parents=True)
    missing_model = submit_generate(repo, enqueuer, shards=1, model="unet-gone")
    trades = repo.create(kind="train", owner="o", input=TrainSpec(
        kind="trades", dataset="digits", epochs=1,
        synthetic=["job:0190a1b2c3d4e5f6a7b8c9d0"]).model_dump(mode="json"))
    bad_spec = submit_generate(repo, enqueuer, shards=1)
    repo.update(bad_spec, lambda r: r.input.update(count=-3))  # e.g. written by another version
    from core.jobs.registry import record_key

    kept, gone = "a" * 24, "b" * 24
    repo.store.put_json(record_key("models", kept), {"id": kept, "kind": "diffusion"})
    registered = submit_generate(repo, enqueuer, shards=1, model=f"model:{kept}")  # not a directory name
    unregistered = submit_generate(repo, enqueuer, shards=1, model=f"model:{gone}")

    report = run(repo, enqueuer, settings, model_dir=settings.model_dir)
    assert sorted(report.failed) == sorted([missing_model, trades.id, bad_spec, unregistered])
    assert registered not in report.failed
    assert f"model: model:{gone} no longer exists" in repo.get(unregistered).error
    assert "no model named 'unet-gone'" in repo.get(missing_model).error
    assert "synthetic[0]: job:0190a1b2c3d4e5f6a7b8c9d0 no longer exists" in repo.get(trades.id).error
    assert "spec is no longer valid" in repo.get(bad_spec).error


def test_frozen_limits_keep_an_accepted_job_valid_under_lower_worker_limits(
        repo, settings, monkeypatch) -> None:
    from core.settings import get_settings

    enqueuer = RecordingEnqueuer(repo)
    job_id = submit_generate(repo, enqueuer, shards=1, steps=400)
    monkeypatch.setenv("CDP_MAX_STEPS", "100")
    get_settings.cache_clear()
    assert run(repo, enqueuer, settings).failed == []
    assert repo.get(job_id).generate_spec().steps == 400


def test_one_pass_at_a_time(repo, settings) -> None:
    enqueuer = RecordingEnqueuer(repo)
    lock = repo.redis.lock(keys.REDIS_RECONCILE_LOCK, timeout=5)
    assert lock.acquire(blocking=False)
    try:
        assert run(repo, enqueuer, settings).skipped
    finally:
        lock.release()
    assert not run(repo, enqueuer, settings).skipped


def test_every_job_kind_has_its_references_listed() -> None:
    from typing import get_args

    from core.jobs.reconcile import REFERENCES
    from core.specs.record import JobKind

    assert set(REFERENCES) == set(get_args(JobKind))
