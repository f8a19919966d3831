"""Fault tests with real processes on loopback: the embedded stack of ``cdp up`` (a private redis-server,
a Celery worker, the control worker with beat and the reconciler, uvicorn), then kill -9, Redis restarted
empty, Redis down, the store unwritable, concurrent Idempotency-Keys, a cancel whose worker died.

Leases, renewals and reconcile passes are shortened (seconds, not the defaults) so each test is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from core.cli.up import EmbeddedStack
from core.jobs.embedded import free_port

pytestmark = pytest.mark.timeout(300)

FAST = {"CDP_LEASE_TTL_S": "2", "CDP_LEASE_RENEW_S": "0.5", "CDP_RECONCILE_INTERVAL_S": "1",
        "CDP_SHARD_SIZE": "2", "CDP_DEVICE": "cpu", "CDP_MAX_ATTEMPTS": "5"}
TERMINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture
def var(tmp_path: Path, tiny_models: Path) -> Path:
    var = tmp_path / "var"
    for name in ("unet-t", "cnn-t"):
        shutil.copytree(tiny_models / name, var / "models" / name)
    return var


@pytest.fixture
def stack_factory(var: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., EmbeddedStack]]:
    monkeypatch.delenv("CDP_REDIS_URL", raising=False)  # always a private Redis
    started: list[EmbeddedStack] = []

    def start(**options: object) -> EmbeddedStack:
        stack = EmbeddedStack(var=var, port=free_port(), env={**FAST, **options.pop("env", {})},  # type: ignore[dict-item]
                              **options)  # type: ignore[arg-type]
        started.append(stack.start(timeout=90))
        return stack

    yield start
    for stack in started:
        stack.stop()


def generation(count: int = 16, steps: int = 30, **overrides: object) -> dict:
    body: dict = {"dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": count,
                  "steps": steps, "schedule": "uniform", "batch_size": 8, "loss": "hnm", "lam": 10.0,
                  "seed": 1}
    body.update(overrides)
    return body


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def wait_terminal(http: httpx.Client, job_id: str, timeout: float = 150.0) -> dict:
    job: dict = {}

    def done() -> bool:
        nonlocal job
        job = http.get(f"/jobs/{job_id}").json()
        return job["status"] in TERMINAL

    wait_for(f"job {job_id} to finish (last seen: {job})", done, timeout)
    return job


def shard_files(var: Path, job_id: str) -> list[Path]:
    folder = var / "store" / "jobs" / job_id / "shards"
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []


def leased_units(stack: EmbeddedStack, job_id: str) -> list[str]:
    assert stack.redis is not None
    client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    try:
        return [key.rsplit(":", 1)[-1] for key in client.scan_iter(f"cdp:lease:{job_id}:*")]
    except redis.ConnectionError:
        return []
    finally:
        client.close()


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has stopped executing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state != "Z"


def test_kill_9_of_the_worker_mid_generation(stack_factory, var: Path) -> None:
    stack = stack_factory()
    http = httpx.Client(base_url=stack.base_url, timeout=30)
    job_id = http.post("/jobs/generate", json=generation(steps=50)).json()["id"]
    running: list[str] = []

    def mid_shard() -> bool:  # a shard holds its lease, has counted its attempt, and is not written yet
        done = {p.stem for p in shard_files(var, job_id)}
        log_path = var / "logs" / "worker.log"
        log_text = log_path.read_text() if log_path.exists() else ""
        # the attempt is counted just after the lease is taken: a kill in between would leave it uncounted
        running[:] = [u for u in leased_units(stack, job_id)
                      if u.startswith("shard-") and u.removeprefix("shard-") not in done
                      and f"job {job_id}: {u} started (attempt" in log_text]
        return len(done) >= 2 and bool(running)

    wait_for("two shards and a third one running", mid_shard)
    victim = stack.pid("worker")
    os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
    (unit,) = running
    # SIGKILL takes effect when the process next runs: a rename already in the kernel completes first. Once
    # the process is gone (or a zombie), whether its shard landed in that instant is settled.
    wait_for("the killed worker to be gone", lambda: not process_alive(victim), 30)  # type: ignore[arg-type]
    lost = not (var / "store" / "jobs" / job_id / "shards" / f"{unit.removeprefix('shard-')}.npz").exists()
    wait_for("the supervisor to restart the worker", lambda: stack.pid("worker") not in (None, victim), 30)
    assert http.get("/healthz").status_code == 200  # the stack stays up

    job = wait_terminal(http, job_id)
    assert job["status"] == "succeeded", job["error"]
    metrics = http.get(f"/jobs/{job_id}/metrics").json()["metrics"]
    assert metrics["generated"] == 16 and len(shard_files(var, job_id)) == 8
    # every shard was written exactly once across both worker processes
    log_text = (var / "logs" / "worker.log").read_text()
    for k in range(8):
        assert log_text.count(f"job {job_id}: shard {k} written") == 1, k
    # the shard that was running when the worker died ran again (unless it had landed just before the kill)
    assert job["attempts"][unit] == (2 if lost else 1)
    assert all(n == 1 for u, n in job["attempts"].items() if u != unit)
    assert any("worker exited with code -9" in event for event in stack.events)


def test_kill_9_of_the_worker_mid_training_resumes_from_the_epoch_checkpoint(stack_factory,
                                                                             var: Path) -> None:
    stack = stack_factory()
    http = httpx.Client(base_url=stack.base_url, timeout=30)
    job_id = http.post("/jobs/train", json={
        "kind": "classifier", "dataset": "digits", "epochs": 6, "batch_size": 16,
        "arch_options": {"width": 8, "feature_dim": 16}, "eval_samples": 16,
        "eval_attack_steps": 1}).json()["id"]
    checkpoint = var / "store" / "jobs" / job_id / "checkpoints" / "checkpoint.pt"
    wait_for("the first epoch checkpoint in the store", checkpoint.exists, 90)
    os.kill(stack.pid("worker"), signal.SIGKILL)  # type: ignore[arg-type]
    job = wait_terminal(http, job_id, timeout=200)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == {"train": 2}
    log_text = (var / "logs" / "worker.log").read_text()
    messages = [json.loads(line)["message"] if line.startswith("{") else line  # CDP_LOG_FORMAT=json lines
                for line in log_text.splitlines()]
    resumed = [line for line in messages if "resuming classifier training" in line]
    assert len(resumed) == 1 and " at epoch " in resumed[0]
    assert int(resumed[0].rsplit(" at epoch ", 1)[1].split()[0]) >= 1  # not from scratch
    history = http.get(f"/jobs/{job_id}/metrics").json()["metrics"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]


def test_redis_restarted_empty_with_jobs_queued_and_running(stack_factory, var: Path) -> None:
    stack = stack_factory(persist_redis=False)  # the supervisor restarts it with nothing in it
    http = httpx.Client(base_url=stack.base_url, timeout=30)
    ids = []
    for i in range(3):
        reply = http.post("/jobs/generate", json=generation(count=8, steps=20, seed=i),
                          headers={"Idempotency-Key": f"batch-{i}"})
        assert reply.status_code == 202, reply.text
        ids.append(reply.json()["id"])
    wait_for("the first job to run", lambda: bool(leased_units(stack, ids[0])))
    assert http.get(f"/jobs/{ids[2]}").json()["status"] == "queued"
    stack.redis.kill()  # type: ignore[union-attr]
    wait_for("redis to be restarted", lambda: any("redis exited" in e for e in stack.events), 20)

    for job_id in ids:
        job = wait_terminal(http, job_id, timeout=200)
        assert job["status"] == "succeeded", job["error"]
        assert len(shard_files(var, job_id)) == 4
    replay = http.post("/jobs/generate", json=generation(count=8, steps=20, seed=0),
                       headers={"Idempotency-Key": "batch-0"})
    assert replay.json()["id"] == ids[0]  # the binding survived in the store: no duplicate job
    assert sorted(p.name for p in (var / "store" / "jobs").iterdir()) == sorted(ids)


def test_store_unwritable_mid_job(stack_factory, var: Path) -> None:
    stack = stack_factory()
    http = httpx.Client(base_url=stack.base_url, timeout=30)
    job_id = http.post("/jobs/generate", json=generation(count=16, steps=50)).json()["id"]
    # the outage must start mid-job: after the first shard, while most are still to come
    wait_for("a first shard", lambda: len(shard_files(var, job_id)) >= 1)
    assert len(shard_files(var, job_id)) < 6, "the job ran too fast for the outage to hit it"
    store, parked = var / "store", var / "store.parked"
    store.rename(parked)
    store.write_text("not a directory: every write under the store fails")
    time.sleep(5)  # several lease periods and reconcile passes with the store failing
    assert http.get(f"/jobs/{job_id}").json()["status"] == "running"  # not failed for an outage
    store.unlink()
    parked.rename(store)

    job = wait_terminal(http, job_id, timeout=200)
    if job["status"] == "succeeded":
        assert len(shard_files(var, job_id)) == 8
    else:  # the other allowed outcome: failed, naming the store
        assert job["status"] == "failed" and "Storage" in (job["error"] or ""), job
    log_text = (var / "logs" / "worker.log").read_text()
    assert "a dependency failed" in log_text  # the outage was met and survived, not skipped
    assert "raised unexpected" not in log_text  # every failure was handled inside the unit, none escaped


def test_redis_down_answers_503_and_reads_keep_working(stack_factory, var: Path) -> None:
    stack = stack_factory(restart=False)
    http = httpx.Client(base_url=stack.base_url, timeout=30)
    done_id = http.post("/jobs/generate", json=generation(count=2, steps=2)).json()["id"]
    assert wait_terminal(http, done_id)["status"] == "succeeded"
    stack.redis.kill()  # type: ignore[union-attr]

    reply = http.get(f"/jobs/{done_id}")
    assert reply.status_code == 200 and reply.json()["status"] == "succeeded"
    listing = http.get("/jobs")
    assert listing.status_code == 200 and [j["id"] for j in listing.json()["items"]] == [done_id]
    assert http.get(f"/jobs/{done_id}/metrics").status_code == 200
    refused = http.post("/jobs/generate", json=generation(count=2, steps=2),
                        headers={"Idempotency-Key": "during-outage"})
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert int(refused.headers["Retry-After"]) > 0
    assert "Redis" in refused.json()["detail"] and "127.0.0.1" not in refused.text
    ready = http.get("/readyz")
    assert ready.status_code == 503 and str(stack.redis.port) not in ready.text  # type: ignore[union-attr]
    assert [p.name for p in (var / "store" / "jobs").iterdir()] == [done_id]  # nothing left behind

    stack.redis.start()  # type: ignore[union-attr]
    accepted = http.post("/jobs/generate", json=generation(count=2, steps=2),
                         headers={"Idempotency-Key": "during-outage"})
    assert accepted.status_code == 202, accepted.text  # the key of the failed submission was released
    assert wait_terminal(http, accepted.json()["id"])["status"] == "succeeded"


def test_concurrent_requests_with_one_idempotency_key_make_one_job(stack_factory, var: Path) -> None:
    stack = stack_factory()
    barrier = threading.Barrier(50)
    results: list[tuple[int, str] | BaseException] = []

    def submit() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=60) as http:
            barrier.wait()
            try:
                reply = http.post("/jobs/generate", json=generation(count=2, steps=2),
                                  headers={"Idempotency-Key": "one-key"})
                results.append((reply.status_code, reply.json().get("id", reply.text)))
            except BaseException as exc:  # a reset connection would land here
                results.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors and len(results) == 50
    assert {status for status, _ in results} == {202}  # type: ignore[misc]
    assert len({job_id for _, job_id in results}) == 1  # type: ignore[misc]
    assert len(list((var / "store" / "jobs").iterdir())) == 1


def test_cancel_of_a_job_whose_worker_died(stack_factory, var: Path) -> None:
    stack = stack_factory(restart=False)
    http = httpx.Client(base_url=stack.base_url, timeout=30)
    # Eight shards for one worker: while it holds the first lease the job cannot be finished. (With one shard
    # of 4 images a loaded machine let the worker finish the job between the test seeing the lease and the
    # kill, and the cancel then met a succeeded job: cancel_requested false.) The worker is stopped at once,
    # and the test checks that the job is still unfinished before it kills the worker.
    job_id = http.post("/jobs/generate", json=generation(count=64, steps=400)).json()["id"]
    wait_for("the job to run", lambda: bool(leased_units(stack, job_id))
             and http.get(f"/jobs/{job_id}").json()["status"] == "running")  # (the lease comes first)
    worker = stack.pid("worker")
    os.kill(worker, signal.SIGSTOP)  # type: ignore[arg-type]
    assert http.get(f"/jobs/{job_id}").json()["status"] == "running"
    os.kill(worker, signal.SIGKILL)  # type: ignore[arg-type]
    reply = http.post(f"/jobs/{job_id}/cancel")
    assert reply.status_code == 200 and reply.json()["cancel_requested"] is True
    job = wait_terminal(http, job_id, timeout=30)  # the reconciler, once the dead worker's lease expired
    assert job["status"] == "canceled"


def test_worker_killed_and_redis_flushed_while_jobs_wait(stack_factory, var: Path) -> None:
    """Jobs waiting for a running training job: its worker is killed and Redis restarts empty (the
    dependants' sets, mirrors and queues gone); the reconciler resumes the training, and its end releases
    every waiting job from the store's markers."""
    stack = stack_factory(persist_redis=False)
    http = httpx.Client(base_url=stack.base_url, timeout=30)
    train = http.post("/jobs/train", json={
        "kind": "classifier", "dataset": "digits", "epochs": 4, "batch_size": 16,
        "arch_options": {"width": 8, "feature_dim": 16}, "eval_samples": 16, "eval_attack_steps": 1}).json()
    gen = http.post("/jobs/generate",
                    json=generation(count=4, steps=4, classifier=f"job:{train['id']}")).json()
    evaluation = http.post("/jobs/evaluate", json={"model": f"job:{train['id']}", "dataset": "digits",
                                                   "attacks": ["pgd_ce"], "steps": 1, "limit": 16}).json()
    after = http.post("/jobs/evaluate", json={"model": f"job:{train['id']}", "dataset": "digits",
                                              "attacks": ["pgd_cw"], "steps": 1, "limit": 16}).json()
    assert {gen["status"], evaluation["status"], after["status"]} == {"waiting"}
    checkpoint = var / "store" / "jobs" / train["id"] / "checkpoints" / "checkpoint.pt"
    wait_for("the first epoch checkpoint in the store", checkpoint.exists, 90)
    os.kill(stack.pid("worker"), signal.SIGKILL)  # type: ignore[arg-type]
    stack.redis.kill()  # type: ignore[union-attr]
    wait_for("redis to be restarted", lambda: any("redis exited" in e for e in stack.events), 20)
    for job in (train, gen, evaluation, after):
        done = wait_terminal(http, job["id"], timeout=200)
        assert done["status"] == "succeeded", (job["id"], done["error"])
    assert http.get(f"/jobs/{train['id']}").json()["attempts"] == {"train": 2}
