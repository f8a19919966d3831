"""The service across several hosts: Redis, the store (moto's S3 server, versioned bucket), the API and the
control worker on a server namespace, one Celery worker on each of two worker namespaces, each host with its
own address on its own veth link (tests/netns_hosts.py). Small lease settings (TTL 2 s, renewals every
0.5 s, a reconcile every second) keep the tests short.

"Written once" is read from the store itself: the bucket keeps every version of every object, so a second
write of a shard, even with the same bytes, would be a second version.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.jobs import keys
from tests.netns_hosts import ACCESS, BUCKET, SECRET, Hosts, faketime, start_service, why_not

REASON = why_not()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"no network namespaces: {REASON}"),
              pytest.mark.timeout(300)]
CLOCK_AHEAD_S = 30


def wait_for(what: str, predicate: Callable[[], object], timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Cluster:
    def __init__(self, hosts: Hosts, var: Path) -> None:
        import httpx
        import redis
        from minio import Minio

        self.hosts, self.var = hosts, var
        self.http = httpx.Client(base_url="http://127.0.0.1:8000", timeout=30)
        self.redis = redis.Redis(port=6379, decode_responses=True)
        self.minio = Minio("127.0.0.1:9000", access_key=ACCESS, secret_key=SECRET, secure=False)
        self.worker_pids: list[int] = []
        self.worker_names: list[str] = []

    def log(self, name: str) -> str:
        path = self.var / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def submit(self, count: int, steps: int) -> str:
        reply = self.http.post("/jobs/generate", json={
            "dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": count, "steps": steps,
            "schedule": "uniform", "batch_size": 2, "loss": "hnm", "lam": 10.0, "seed": 0})  # fmt: skip
        assert reply.status_code == 202, reply.text
        return reply.json()["id"]

    def wait_done(self, job_id: str, timeout: float = 120.0) -> dict:
        job = wait_for(f"job {job_id} to finish", lambda: (lambda j: j if j["status"] in (
            "succeeded", "failed", "canceled") else None)(self.http.get(f"/jobs/{job_id}").json()), timeout)
        assert job["status"] == "succeeded", job
        return job

    def holder_of(self, job_id: str, unit: str) -> int | None:
        """The pid holding ``unit``'s lease (holders are "<hostname>:<pid>")."""
        value = self.redis.get(keys.redis_lease(job_id, unit))
        return int(value.rpartition(":")[2]) if value else None

    def shard_versions(self, job_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        prefix = keys.job_prefix(job_id) + "shards/"
        for item in self.minio.list_objects(BUCKET, prefix=prefix, recursive=True, include_version=True):
            counts[item.object_name] = counts.get(item.object_name, 0) + 1
        return counts

    def starts(self, worker: int, job_id: str) -> list[int]:
        text = self.log(self.worker_names[worker])
        return [int(k) for k in re.findall(rf"job {job_id}: shard-(\d+) started", text)]

    def written(self, job_id: str) -> list[int]:
        text = "".join(self.log(name) for name in self.worker_names)
        return sorted(int(k) for k in re.findall(rf"job {job_id}: shard (\d+) written", text))


def assert_each_shard_written_once(cluster: Cluster, job_id: str, n_shards: int) -> None:
    versions = cluster.shard_versions(job_id)
    assert len(versions) == 3 * n_shards, versions  # <k>.npz and its two .npy files
    assert set(versions.values()) == {1}, versions
    assert cluster.written(job_id) == list(range(n_shards))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Cluster]:
    var = tmp_path_factory.mktemp("netns")
    hosts = Hosts(workers=2).create()
    settings = {"CDP_SHARD_SIZE": "2", "CDP_LEASE_TTL_S": "2", "CDP_LEASE_RENEW_S": "0.5",
                "CDP_RECONCILE_INTERVAL_S": "1"}
    try:
        with hosts.inside():
            # host 2's clock runs 30 s ahead (libfaketime), when the machine has it
            workers = start_service(hosts, var, models=tiny_models, settings=settings,
                                    clock_offsets={1: CLOCK_AHEAD_S} if faketime() else None)
            cluster = Cluster(hosts, var)
            cluster.worker_pids = [process.pid for process in workers]
            cluster.worker_names = [f"worker-{k + 1}" for k in range(len(workers))]
            yield cluster
    finally:
        hosts.destroy()


def test_a_generate_job_spreads_over_both_worker_hosts(cluster: Cluster) -> None:
    job_id = cluster.submit(count=8, steps=20)
    cluster.wait_done(job_id)
    first, second = cluster.starts(0, job_id), cluster.starts(1, job_id)
    assert first and second, (first, second)  # both hosts ran shards
    assert sorted(first + second) == [0, 1, 2, 3]  # each shard once
    assert_each_shard_written_once(cluster, job_id, 4)


def _wait_mid_shard(cluster: Cluster, job_id: str, n_shards: int, worker: int) -> int:
    """The shard of ``job_id`` whose lease ``worker`` holds, once it holds one."""
    pid = cluster.worker_pids[worker]

    def held() -> int | None:
        return next((k for k in range(n_shards) if cluster.holder_of(job_id, f"shard-{k}") == pid), None)

    wait_for(f"worker {worker + 1} to hold a shard of {job_id}", lambda: held() is not None, 60)
    return held()  # type: ignore[return-value]


def test_a_host_cut_off_mid_shard_loses_its_lease_and_the_other_host_finishes(cluster: Cluster) -> None:
    job_id = cluster.submit(count=6, steps=200)
    shard = _wait_mid_shard(cluster, job_id, 3, worker=0)
    cluster.hosts.set_link(0, up=False)
    try:
        # host 2 alone: the cut-off shard's lease expired, the reconciler re-queued it
        cluster.wait_done(job_id)
        assert shard in cluster.starts(1, job_id)
        assert_each_shard_written_once(cluster, job_id, 3)
    finally:
        cluster.hosts.set_link(0, up=True)
    # back on the network, host 1 gives the unit up (its Redis calls failed, or its lease is someone else's)
    gave_up = (rf"job {job_id}: (shard-{shard} gives up its lease"
               rf"|shard-{shard} of job {job_id}: lease \d+ was lost)")
    wait_for("host 1 to notice", lambda: re.search(gave_up, cluster.log("worker-1")), 60)
    assert_each_shard_written_once(cluster, job_id, 3)


def test_a_frozen_host_that_returns_mid_shard_is_fenced_off_by_the_lease_token(cluster: Cluster) -> None:
    """Host 1 is frozen (SIGSTOP: a suspended VM, a long stall) and cut off while it runs a shard, so it comes
    back mid-shard without having noticed anything: the case where a late write could happen."""
    job_id = cluster.submit(count=6, steps=200)
    shard = _wait_mid_shard(cluster, job_id, 3, worker=0)
    token = int(cluster.redis.get(keys.redis_lease(job_id, f"shard-{shard}")).split()[0])
    os.kill(cluster.worker_pids[0], signal.SIGSTOP)
    cluster.hosts.set_link(0, up=False)
    try:
        cluster.wait_done(job_id)
        assert_each_shard_written_once(cluster, job_id, 3)
    finally:
        cluster.hosts.set_link(0, up=True)
        os.kill(cluster.worker_pids[0], signal.SIGCONT)
    lost = f"shard-{shard} of job {job_id}: lease {token} was lost"
    late = f"job {job_id}: shard {shard} written"
    wait_for("host 1 to end its shard", lambda: lost in cluster.log("worker-1")
             or late in cluster.log("worker-1"))
    assert lost in cluster.log("worker-1")
    assert_each_shard_written_once(cluster, job_id, 3)  # the late writer wrote nothing


@pytest.mark.skipif(faketime() is None, reason="libfaketime's `faketime` (Debian's faketime) is missing")
def test_a_host_whose_clock_runs_30_s_ahead_does_not_steal_a_live_lease(cluster: Cluster) -> None:
    from core.jobs.queue import Enqueuer, make_celery
    from core.settings import Settings

    app = make_celery(Settings(redis_url="redis://127.0.0.1:6379/0"), read_results=False)
    ahead = "worker-2@host2"
    app.control.cancel_consumer("cdp.generate", destination=[ahead], reply=True, timeout=10)
    try:
        job_id = cluster.submit(count=2, steps=400)  # one shard: host 1 takes it
        _wait_mid_shard(cluster, job_id, 1, worker=0)
        app.control.add_consumer("cdp.generate", destination=[ahead], reply=True, timeout=10)
        sent = datetime.now(UTC)
        for _ in range(2):  # duplicates of the running shard (a redelivery, a reconciler's resend)
            Enqueuer(app).unit(job_id, "shard-0")
        pattern = rf'"ts": "([^"]+)"[^\n]*job {job_id}: shard-0 is held by'
        stamp = wait_for("host 2 to drop a duplicate",
                         lambda: re.search(pattern, cluster.log("worker-2")), 60)
        cluster.wait_done(job_id)
    finally:
        app.control.add_consumer("cdp.generate", destination=[ahead], reply=True, timeout=10)
    # host 2's clock really was ahead: the log line it wrote after `sent` is stamped 30 s later
    ahead_by = (datetime.fromisoformat(stamp.group(1)) - sent).total_seconds()
    assert CLOCK_AHEAD_S - 5 <= ahead_by <= CLOCK_AHEAD_S + 30, ahead_by
    assert cluster.starts(0, job_id) == [0] and cluster.starts(1, job_id) == []
    assert_each_shard_written_once(cluster, job_id, 1)
