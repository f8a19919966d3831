"""core.jobs.execute without Celery: idempotent shards, the attempt cap, training resume after a lost worker.

The enqueuer is a fake that records what would have been sent."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import redis

from core.jobs import execute, keys
from core.jobs.execute import WorkerContext, run_train, shard_seed
from core.jobs.records import JobRepository
from core.settings import Settings
from core.specs import GenerateSpec, TrainSpec
from core.storage import LocalStore


class RecordingEnqueuer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple]] = []

    def generate(self, job_id: str, shards: int) -> None:
        self.sent += [("generate_shard", (job_id, k)) for k in range(shards)]

    def finalize(self, job_id: str) -> None:
        self.sent.append(("finalize", (job_id,)))

    def train(self, job_id: str) -> None:
        self.sent.append(("train", (job_id,)))


@pytest.fixture
def ctx(settings: Settings, store: LocalStore, redis_client: redis.Redis) -> WorkerContext:
    return WorkerContext(repo=JobRepository(store, redis_client), store=store, enqueuer=RecordingEnqueuer(),
                         model_dir=settings.model_dir, work_dir=settings.work_dir,
                         data_root=settings.data_root, device="cpu", shard_size=settings.shard_size,
                         max_attempts=2)


def test_shard_seeds_are_deterministic_and_distinct() -> None:
    seeds = [shard_seed(7, k) for k in range(100)]
    assert seeds == [shard_seed(7, k) for k in range(100)]
    assert len(set(seeds)) == 100 and all(0 <= s < 2**63 for s in seeds)
    assert shard_seed(8, 0) != shard_seed(7, 0)


def test_a_task_delivered_too_often_fails_the_job(ctx: WorkerContext) -> None:
    spec = GenerateSpec(dataset="digits", model="unet-t", classifier="cnn-t", count=4)
    job = ctx.repo.create(kind="generate", owner="o", input=spec.model_dump(mode="json"))
    for _ in range(2):  # two deliveries allowed (max_attempts=2); pretend the worker died each time
        ctx.repo.bump_attempt(job.id, "shard-0")
    assert execute.run_generate_shard(ctx, job.id, 0) == "skipped"
    failed = ctx.repo.get(job.id)
    assert failed.status == "failed" and "delivered 3 times" in (failed.error or "")
    assert failed.attempt == 3


def test_existing_shard_is_not_redone_and_finalize_is_enqueued_once(ctx: WorkerContext) -> None:
    spec = GenerateSpec(dataset="digits", model="unet-t", classifier="cnn-t", count=4)  # one shard
    job = ctx.repo.create(kind="generate", owner="o", input=spec.model_dump(mode="json"))
    shard = execute._npz_bytes(image=np.zeros((4, 16, 16, 1), np.uint8))
    ctx.store.put_bytes(keys.shard_key(job.id, 0), shard)
    before = ctx.store.stat(keys.shard_key(job.id, 0))
    assert execute.run_generate_shard(ctx, job.id, 0) == "exists"
    assert execute.run_generate_shard(ctx, job.id, 0) == "exists"
    assert ctx.store.stat(keys.shard_key(job.id, 0)).etag == before.etag
    assert ctx.enqueuer.sent == [("finalize", (job.id,))]
    assert ctx.repo.get(job.id).attempt == 0  # no generation attempt was made


class WorkerLost(BaseException):
    """Stands in for the worker process dying mid-task (not an Exception: nothing in the task catches it)."""


def test_training_resumes_from_store_checkpoints_after_a_lost_worker(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spec = TrainSpec(kind="classifier", dataset="digits", epochs=2, batch_size=128, eval_samples=64,
                     arch_options={"width": 4, "feature_dim": 16},
                     eval_attack_steps=2)
    job = ctx.repo.create(kind="train", owner="o", input=spec.model_dump(mode="json"))

    original_call = execute._TrainProgress.__call__

    def die_after_first_epoch(self, *, stage: str, current: int, total: int, **kw) -> None:
        original_call(self, stage=stage, current=current, total=total, **kw)
        if stage == "epoch" and current == 1:
            raise WorkerLost

    monkeypatch.setattr(execute._TrainProgress, "__call__", die_after_first_epoch)
    with pytest.raises(WorkerLost):
        run_train(ctx, job.id)
    assert ctx.repo.get(job.id).status == "running"
    assert ctx.store.exists(keys.checkpoint_prefix(job.id) + "checkpoint.pt")
    # the redelivered task lands on another machine: no local files, only the store
    import shutil

    shutil.rmtree(ctx.work_dir / "jobs" / job.id)
    monkeypatch.setattr(execute._TrainProgress, "__call__", original_call)
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
