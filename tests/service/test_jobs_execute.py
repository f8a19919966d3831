"""The worker's units (core.jobs.context, generate, training) without Celery: leases, the attempt cap,
idempotent shards, the frozen plan, the time limit, a failing store, and training resume after a lost worker.

The enqueuer is a fake that records what would have been sent (and marks units pending like the real one).
"""

from __future__ import annotations

import io
import logging
import shutil
import uuid

import numpy as np
import pytest
import redis

from core.jobs import context, keys
from core.jobs.artifacts import npz_bytes
from core.jobs.context import WorkerContext, unit_seed
from core.jobs.errors import LeaseLost
from core.jobs.generate import run_generate_shard
from core.jobs.records import JobRepository
from core.jobs.training import paths_as_job_names, run_train
from core.progress import ProgressEvent, Stage
from core.settings import Settings
from core.specs import GenerateSpec, JobPlan, TrainSpec, server_limits
from core.storage import LocalStore, MemoryStore, StorageError


class RecordingEnqueuer:
    def __init__(self, repo: JobRepository) -> None:
        self.repo = repo
        self.sent: list[tuple[str, str]] = []
        self.priorities: list[str] = []

    def unit(self, job_id: str, unit: str, *, priority: str = "normal") -> str:
        message_id = uuid.uuid4().hex
        self.sent.append((job_id, unit))
        self.priorities.append(priority)
        self.repo.leases.mark_pending(job_id, unit, message_id)
        return message_id

    def units(self, job_id: str, units: list[str], *, priority: str = "normal") -> None:
        for unit in units:
            self.unit(job_id, unit, priority=priority)


def make_ctx(settings: Settings, store, redis_client: redis.Redis, **overrides) -> WorkerContext:
    repo = JobRepository(store, redis_client, lease_ttl_s=overrides.pop("lease_ttl_s", 30.0))
    options = dict(repo=repo, store=store, enqueuer=RecordingEnqueuer(repo), model_dir=settings.model_dir,
                   work_dir=settings.work_dir, data_root=settings.data_root, device="cpu",
                   shard_size=settings.shard_size, max_attempts=2, lease_renew_s=0.2)
    options.update(overrides)
    return WorkerContext(**options)


@pytest.fixture
def ctx(settings: Settings, store: LocalStore, redis_client: redis.Redis, tiny_models) -> WorkerContext:
    for name in ("unet-t", "cnn-t"):
        shutil.copytree(tiny_models / name, settings.model_dir / name)
    return make_ctx(settings, store, redis_client)


def generate_job(ctx: WorkerContext, count: int = 4, shard_size: int = 8, **spec_overrides):
    spec = GenerateSpec(dataset="digits", model="unet-t", classifier="cnn-t", count=count, steps=2,
                        schedule="uniform", batch_size=8, **spec_overrides)
    shards = -(-count // shard_size)
    return ctx.repo.create(kind="generate", owner="o", input=spec.model_dump(mode="json"),
                           plan=JobPlan(shards=shards, shard_size=shard_size, limits=server_limits()))


def test_shard_seeds_are_deterministic_and_distinct() -> None:
    seeds = [unit_seed(7, k) for k in range(100)]
    assert seeds == [unit_seed(7, k) for k in range(100)]
    assert len(set(seeds)) == 100 and all(0 <= s < 2**63 for s in seeds)
    assert unit_seed(8, 0) != unit_seed(7, 0)


def test_a_unit_started_too_often_fails_the_job(ctx: WorkerContext) -> None:
    job = generate_job(ctx)
    for _ in range(2):  # two starts allowed (max_attempts=2); pretend the worker died each time
        ctx.repo.count_attempt(job.id, "shard-0")
    ctx.repo.note_unit_error(job.id, "shard-0", "StorageError: cannot write 'jobs/x'")
    assert run_generate_shard(ctx, job.id, 0) == "failed"
    failed = ctx.repo.get(job.id)
    assert failed.status == "failed" and "started 3 times" in (failed.error or "")
    assert "StorageError" in failed.error  # the cap names the last cause
    assert failed.attempt == 3 and failed.attempts == {"shard-0": 3}
    assert not ctx.store.exists(keys.active_key(job.id))  # terminal jobs leave the reconciler's index


def test_a_unit_whose_lease_is_held_elsewhere_does_nothing(ctx: WorkerContext) -> None:
    job = generate_job(ctx)
    other = ctx.repo.leases.acquire(job.id, "shard-0", message_id="m-other", holder="host-b:1")
    assert other is not None
    assert run_generate_shard(ctx, job.id, 0, message_id="m-dup") == "busy"
    assert not ctx.store.exists(keys.shard_key(job.id, 0))
    assert ctx.repo.get(job.id).attempts == {}  # a dropped duplicate is not an attempt
    other.release()
    assert run_generate_shard(ctx, job.id, 0, message_id="m-dup") == "done"
    assert ctx.repo.get(job.id).attempts == {"shard-0": 1}


def test_an_executor_that_lost_its_lease_stops_without_writing(ctx: WorkerContext,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    job = generate_job(ctx)
    original = context.JobProgress.__call__
    stolen = []

    def steal_then_report(self, event: ProgressEvent) -> None:
        if not stolen:  # another executor takes over (this one was paused past its TTL)
            ctx.repo.redis.delete(keys.redis_lease(job.id, "shard-0"))
            stolen.append(ctx.repo.leases.acquire(job.id, "shard-0", message_id="m2", holder="b:2"))
            context._UNIT.lease._last_renewed = 0.0  # noqa: SLF001 - force the check against Redis
        original(self, event)

    monkeypatch.setattr(context.JobProgress, "__call__", steal_then_report)
    assert run_generate_shard(ctx, job.id, 0, message_id="m1") == "lease-lost"
    assert not ctx.store.exists(keys.shard_key(job.id, 0))
    assert ctx.repo.get(job.id).status == "running"  # the record is the new executor's to finish
    assert stolen[0] is not None and ctx.repo.leases.holder(job.id, "shard-0") == "b:2"
    # and the new holder's lease is its own: renewing works until someone else's token is there
    assert stolen[0].renew()
    ctx.repo.redis.set(keys.redis_lease(job.id, "shard-0"), "999 c:3")
    assert not stolen[0].renew()
    with pytest.raises(LeaseLost):
        stolen[0].check()


def test_existing_shard_is_not_redone_and_finalize_is_enqueued_once(ctx: WorkerContext) -> None:
    job = generate_job(ctx)  # one shard
    shard = npz_bytes(image=np.zeros((4, 16, 16, 1), np.uint8))
    ctx.store.put_bytes(keys.shard_key(job.id, 0), shard)
    before = ctx.store.stat(keys.shard_key(job.id, 0))
    assert run_generate_shard(ctx, job.id, 0) == "exists"
    assert run_generate_shard(ctx, job.id, 0) == "exists"
    assert ctx.store.stat(keys.shard_key(job.id, 0)).etag == before.etag
    assert ctx.enqueuer.sent == [(job.id, "finalize")]
    assert ctx.repo.get(job.id).attempt == 0  # no generation attempt was made


@pytest.mark.parametrize("guidance", [{}, {"loss": "hnm", "lam": 10.0}], ids=["vanilla", "hnm"])
def test_a_smaller_job_is_the_first_images_of_a_larger_one_from_the_same_seed(
    ctx: WorkerContext, guidance: dict
) -> None:
    """Shard k is seeded from (job seed, k) and its batches from (shard seed, batch): jobs that differ only in
    count share their first images whenever the shard size is a multiple of the batch size, guided or not
    (the sample-efficiency study's nested sets rest on this)."""
    small, large = generate_job(ctx, count=8, **guidance), generate_job(ctx, count=16, **guidance)
    shards = {}
    for job, units in ((small, 1), (large, 2)):
        for k in range(units):
            assert run_generate_shard(ctx, job.id, k) == "done"
            with np.load(io.BytesIO(ctx.store.get_bytes(keys.shard_key(job.id, k)))) as npz:
                shards[job.id, k] = npz["image"].copy()
    assert np.array_equal(shards[small.id, 0], shards[large.id, 0])
    assert not np.array_equal(shards[large.id, 0], shards[large.id, 1])


def test_the_worker_follows_the_plan_frozen_at_submission(settings: Settings, store: LocalStore,
                                                          redis_client: redis.Redis, tiny_models,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker with a lower CDP_MAX_STEPS and another CDP_SHARD_SIZE still runs what the API accepted."""
    for name in ("unet-t", "cnn-t"):
        shutil.copytree(tiny_models / name, settings.model_dir / name)
    ctx = make_ctx(settings, store, redis_client, shard_size=2)
    spec = GenerateSpec(dataset="digits", model="unet-t", classifier="cnn-t", count=6, steps=3,
                        schedule="uniform", batch_size=8)
    job = ctx.repo.create(kind="generate", owner="o", input=spec.model_dump(mode="json"),
                          plan=JobPlan(shards=2, shard_size=4, limits=server_limits()))
    from core.settings import get_settings

    monkeypatch.setenv("CDP_MAX_STEPS", "2")  # the worker's own limit is now below the job's 3 steps
    get_settings.cache_clear()
    assert run_generate_shard(ctx, job.id, 0) == "done"
    assert run_generate_shard(ctx, job.id, 1) == "done"
    sizes = [len(np.load(io.BytesIO(ctx.store.get_bytes(keys.shard_key(job.id, k))))["label"])
             for k in (0, 1)]
    assert sizes == [4, 2]  # the frozen shard size (4), not the worker's (2)
    assert ctx.enqueuer.sent == [(job.id, "finalize")]


def test_a_unit_past_the_time_limit_fails_its_job(settings: Settings, store: LocalStore,
                                                  redis_client: redis.Redis, tiny_models) -> None:
    for name in ("unet-t", "cnn-t"):
        shutil.copytree(tiny_models / name, settings.model_dir / name)
    ctx = make_ctx(settings, store, redis_client, time_limit_s=0.0)
    job = generate_job(ctx)
    assert run_generate_shard(ctx, job.id, 0) == "failed"
    failed = ctx.repo.get(job.id)
    assert failed.status == "failed"
    assert "time limit" in failed.error and "CDP_TASK_TIME_LIMIT_S" in failed.error
    assert not ctx.store.exists(keys.shard_key(job.id, 0))


def test_a_failing_store_releases_the_unit_and_the_cap_names_the_store(
        settings: Settings, redis_client: redis.Redis, tiny_models) -> None:
    for name in ("unet-t", "cnn-t"):
        shutil.copytree(tiny_models / name, settings.model_dir / name)
    store = MemoryStore()
    ctx = make_ctx(settings, store, redis_client)
    job = generate_job(ctx)
    original = store.put_bytes

    def failing_put(key: str, data: bytes, **kw):
        if "/shards/" in key:
            raise StorageError(f"cannot write {key!r}: No space left on device")
        return original(key, data, **kw)

    store.put_bytes = failing_put  # type: ignore[method-assign]
    assert run_generate_shard(ctx, job.id, 0, message_id="m1") == "released"
    record = ctx.repo.get(job.id)
    assert record.status == "running" and record.attempts == {"shard-0": 1}
    state = ctx.repo.leases.states(job.id, ["shard-0"])["shard-0"]
    assert not state.leased and state.taken  # given up: the reconciler hands it on
    assert "No space left" in (ctx.repo.unit_error(job.id, "shard-0") or "")
    # the store fails completely (also for the final write): still nothing is lost or stuck
    store.fail_with = StorageError("store unreachable")
    with pytest.raises(StorageError):  # before the lease: the task retries this very message
        run_generate_shard(ctx, job.id, 0, message_id="m2")
    store.fail_with = None
    assert run_generate_shard(ctx, job.id, 0, message_id="m3") == "released"
    assert run_generate_shard(ctx, job.id, 0, message_id="m4") == "failed"  # attempt 3 > cap 2
    failed = ctx.repo.get(job.id)
    assert failed.status == "failed" and "No space left on device" in failed.error


class WorkerLost(BaseException):
    """Stands in for the worker process dying mid-task (not an Exception: nothing in the task catches it)."""


def test_training_resumes_from_store_checkpoints_after_a_lost_worker(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spec = TrainSpec(kind="classifier", dataset="digits", epochs=2, batch_size=128, eval_samples=64,
                     arch_options={"width": 4, "feature_dim": 16},
                     eval_attack_steps=2)
    job = ctx.repo.create(kind="train", owner="o", input=spec.model_dump(mode="json"))

    original_call = context.JobProgress.__call__

    def die_after_first_epoch(self, event: ProgressEvent) -> None:
        original_call(self, event)
        if event.stage == Stage.EPOCH and event.current == 1:
            raise WorkerLost

    monkeypatch.setattr(context.JobProgress, "__call__", die_after_first_epoch)
    with pytest.raises(WorkerLost):
        run_train(ctx, job.id)
    assert ctx.repo.get(job.id).status == "running"
    assert ctx.store.exists(keys.checkpoint_prefix(job.id) + "checkpoint.pt")
    # the redelivered task lands on another machine: no local files, only the store
    shutil.rmtree(ctx.work_dir / "jobs" / job.id)
    monkeypatch.setattr(context.JobProgress, "__call__", original_call)
    with caplog.at_level(logging.INFO):
        assert run_train(ctx, job.id) == "done", ctx.repo.get(job.id).error
    assert any("resuming" in r.getMessage() and "epoch 1" in r.getMessage() for r in caplog.records)
    done = ctx.repo.get(job.id)
    assert done.status == "succeeded" and done.attempt == 2
    metrics = ctx.store.get_json(keys.metrics_key(job.id))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert 0 <= metrics["test"]["clean_acc"] <= 1 and 0 <= metrics["test"]["robust_acc"] <= 1
    model_files = {i.key.rsplit("/", 1)[-1] for i in ctx.store.list(keys.model_prefix(job.id))}
    assert {"model.safetensors", "config.json"} <= model_files and "checkpoint.pt" not in model_files
    assert metrics["model_dir"] == "model/"  # where the model is in the job, not where it was trained
    assert not server_paths(metrics), server_paths(metrics)


def server_paths(value: object) -> list[str]:
    """Every string in ``value`` (nested dicts and lists) that names an absolute path."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in server_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in server_paths(v)]
    return [value] if isinstance(value, str) and (value.startswith("/") or ":\\" in value) else []


def test_training_metrics_name_paths_relative_to_the_job(tmp_path) -> None:
    out = tmp_path / "jobs" / "j1"
    metrics = {"model_dir": str(out), "final_model_dir": str(out / "final"), "data": str(tmp_path / "data"),
               "history": [{"epoch": 1, "best": str(out / "best")}], "arch": "resnet",
               "dirs": [str(tmp_path)]}
    named = paths_as_job_names(metrics, out)
    assert named == {"model_dir": "model/", "final_model_dir": "model/final", "arch": "resnet",
                     "history": [{"epoch": 1, "best": "model/best"}], "dirs": [None]}
    assert not server_paths(named)


def test_a_record_lock_left_by_a_killed_process_delays_the_next_update_and_never_fails_it(
        ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.jobs import records
    from core.jobs.errors import DependencyUnavailable

    monkeypatch.setattr(records, "UPDATE_LOCK_TTL_S", 1)
    monkeypatch.setattr(records, "UPDATE_LOCK_WAIT_S", 3)
    job = generate_job(ctx)
    # a process killed inside an update leaves its lock, which lives as long as any update's lock
    ctx.repo.redis.set(keys.redis_lock(job.id), "a-dead-holder", px=records.UPDATE_LOCK_TTL_S * 1000)
    assert ctx.repo.request_cancel(job.id).cancel_requested  # waits for the lock to expire, then updates
    # a holder that never lets go (a hung process): the update is a dependency failure (a 503), not a crash
    ctx.repo.redis.set(keys.redis_lock(job.id), "a-hung-holder")
    monkeypatch.setattr(records, "UPDATE_LOCK_WAIT_S", 0.3)
    with pytest.raises(DependencyUnavailable, match="locked"):
        ctx.repo.mark_running(job.id)
    ctx.repo.redis.delete(keys.redis_lock(job.id))
