"""Quotas as an operator expects them: an experiment counts by its planned children against the
concurrent-jobs quota, and a job that fails through no fault of its team gives its daily images and epochs
back (the record says ``refunded``), while one that fails on its own input or is canceled does not."""

from __future__ import annotations

import time

import redis

from core.jobs.quotas import charges_of
from core.jobs.reconcile import reconcile
from core.jobs.records import JobRepository
from core.settings import Settings
from core.storage import LocalStore
from tests.service.test_api_production import make_client
from tests.service.test_jobs_execute import RecordingEnqueuer

GEN = {"dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 8, "steps": 2}
TRAIN = {"kind": "classifier", "dataset": "digits", "epochs": 4}


def experiment(arms: int, seeds: int) -> dict:
    return {"dataset": "digits", "seeds": list(range(seeds)), "trades": {"epochs": 1},
            "arms": [{"name": f"arm {a}"} for a in range(arms)]}


def named_models(settings: Settings) -> None:
    for name in ("unet-t", "cnn-t"):
        (settings.model_dir / name).mkdir(parents=True, exist_ok=True)


def lose_the_worker(repo: JobRepository, job_id: str, unit: str, times: int) -> None:
    """A worker takes the unit and dies, ``times`` times (its lease expires unrenewed)."""
    for attempt in range(times):
        assert repo.leases.acquire(job_id, unit, message_id=f"m{attempt}", holder="w:1") is not None
        repo.count_attempt(job_id, unit)
        time.sleep(0.45)


def test_an_experiment_counts_by_its_planned_children(store: LocalStore, redis_client: redis.Redis,
                                                      settings: Settings) -> None:
    client = make_client(store, redis_client, quota_concurrent_jobs=5)
    too_big = client.post("/jobs/experiment", json=experiment(3, 2))  # 1 + 6 slots
    assert too_big.status_code == 429, too_big.text
    assert "1 + arms x seeds" in too_big.json()["detail"] and "needs 7" in too_big.json()["detail"]
    held = client.post("/jobs/experiment", json=experiment(2, 2))  # 1 + 4 = 5 slots: the whole quota
    assert held.status_code == 202, held.text
    refused = client.post("/jobs/train", json=TRAIN)
    assert refused.status_code == 429 and refused.json()["type"] == "/problems/quota-concurrent-jobs"
    assert "5 are in use" in refused.json()["detail"]
    client.post(f"/jobs/{held.json()['id']}/cancel")
    assert client.post("/jobs/train", json=TRAIN).status_code == 202  # its slots are free again


def test_children_are_charged_nothing_and_experiments_their_runs() -> None:
    spec = experiment(2, 3)
    charges = charges_of("experiment", spec)
    assert (charges.slots, charges.epochs, charges.images) == (7, 6, 0)
    assert charges_of("train", TRAIN, parent="0" * 24).slots == 0
    assert charges_of("train", TRAIN, parent="0" * 24).epochs == 0
    assert charges_of("generate", GEN).images == 8


def test_a_job_whose_worker_was_lost_every_time_gives_its_images_back(
        store: LocalStore, redis_client: redis.Redis, settings: Settings) -> None:
    named_models(settings)
    client = make_client(store, redis_client, quota_images_per_day=12)
    first = client.post("/jobs/generate", json=GEN).json()
    over = client.post("/jobs/generate", json=GEN)
    assert over.status_code == 429
    assert "gives its images and epochs back" in over.json()["detail"]  # the quota reply says so

    repo = JobRepository(store, redis_client, lease_ttl_s=0.3)
    lose_the_worker(repo, first["id"], "shard-0", times=2)
    report = reconcile(repo, RecordingEnqueuer(repo), max_attempts=2, default_shard_size=8)
    assert report.failed == [first["id"]]
    failed = client.get(f"/jobs/{first['id']}").json()
    assert failed["status"] == "failed" and failed["refunded"] is True
    again = client.post("/jobs/generate", json=GEN)
    assert again.status_code == 202, again.text  # the 8 images of the lost job were given back
    assert client.post("/jobs/generate", json=GEN).status_code == 429  # and only those


def test_a_job_that_fails_on_its_own_or_is_canceled_is_not_refunded(
        store: LocalStore, redis_client: redis.Redis, settings: Settings) -> None:
    client = make_client(store, redis_client, quota_epochs_per_day=8)
    repo = JobRepository(store, redis_client)
    failing = client.post("/jobs/train", json=TRAIN).json()
    canceled = client.post("/jobs/train", json=TRAIN).json()
    repo.finish(failing["id"], "failed", error="ValueError: the model diverged")  # the job's own error
    client.post(f"/jobs/{canceled['id']}/cancel")
    assert client.get(f"/jobs/{failing['id']}").json()["refunded"] is False
    assert client.post("/jobs/train", json=TRAIN).status_code == 429  # the 8 epochs stay used today


def test_a_refund_never_takes_a_counter_below_zero(store: LocalStore, redis_client: redis.Redis,
                                                   settings: Settings) -> None:
    client = make_client(store, redis_client, quota_epochs_per_day=8)
    repo = JobRepository(store, redis_client)
    job = client.post("/jobs/train", json=TRAIN).json()
    for key in redis_client.scan_iter("cdp:quota:*:epochs:*"):
        redis_client.set(key, 1)  # e.g. a Redis that lost its data and counted afresh
    repo.finish(job["id"], "failed", error="lost", refund=True)
    assert [int(redis_client.get(k)) for k in redis_client.scan_iter("cdp:quota:*:epochs:*")] == [0]


def test_an_experiment_whose_children_were_lost_is_refunded_and_one_whose_child_failed_is_not(
        store: LocalStore, redis_client: redis.Redis, settings: Settings) -> None:
    from core.jobs.experiment import child_id, run_experiment
    from tests.service.test_jobs_execute import make_ctx

    client = make_client(store, redis_client, quota_epochs_per_day=2)
    ctx = make_ctx(settings, store, redis_client)
    outcomes = {}
    for refund in (True, False):
        job = client.post("/jobs/experiment", json=experiment(1, 2)).json()  # 1 epoch x 2 runs: 2 epochs
        assert client.post("/jobs/experiment", json=experiment(1, 1)).status_code == 429
        assert run_experiment(ctx, job["id"]) == "waiting"  # it created its TRADES children
        child = child_id(job["id"], "arm 0/0/train")
        ctx.repo.finish(child, "failed", error="lost" if refund else "ValueError: diverged", refund=refund)
        assert run_experiment(ctx, job["id"]) == "failed"
        outcomes[refund] = client.get(f"/jobs/{job['id']}").json()["refunded"]
        if refund:  # its 2 epochs are back: the next experiment fits
            assert client.get(f"/jobs/{child}").json()["refunded"] is True
    assert outcomes == {True: True, False: False}
    assert client.post("/jobs/experiment", json=experiment(1, 1)).status_code == 429
