"""Several hosts on one machine: network namespaces joined by veth pairs, for tests of what crosses a network.

Topology (every address lives inside these namespaces; nothing is added to the machine's own namespace, and
the namespaces have no route out, so no packet leaves them)::

    server  10.231.1.1/24 --veth-- 10.231.1.2/24  worker host 1
            10.231.2.1/24 --veth-- 10.231.2.2/24  worker host 2

The server namespace runs Redis, the object store (moto's S3 server, the one the storage contract suite
uses), the API and the control worker (Celery beat + the reconciler); each worker namespace runs one Celery
worker that reaches Redis and the store at the server's address on its own link. :func:`why_not` says why
namespaces cannot be made here (not root, no ``ip``, no permission), for a clean skip.

The test process itself talks to the server namespace by switching its calling thread into it
(``setns(2)`` through ctypes; :meth:`Hosts.inside`), so it, too, adds nothing to the machine's network.

A worker's clock: namespaces share the machine's clock, so a host whose clock runs ahead is simulated by
starting its worker under libfaketime (``faketime -f +30s``, Debian's ``faketime``), which shifts every
wall-clock reading of the process (``time.time``, ``datetime.now``, the timestamps of its logs) while its
monotonic clock stays real (``FAKETIME_DONT_FAKE_MONOTONIC=1``), as on a host whose NTP is off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
SUBNET = "10.231"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def why_not() -> str | None:
    """None when network namespaces can be made here, else the reason."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"cdp-probe-{uuid.uuid4().hex[:8]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()[:200]}"
    _ip("netns", "del", probe, check=False)
    return None


def faketime() -> str | None:
    return shutil.which("faketime")


class Hosts:
    """The server namespace and ``workers`` worker namespaces, each worker on its own veth link."""

    def __init__(self, workers: int = 2) -> None:
        tag = uuid.uuid4().hex[:6]
        self.server = f"cdp-{tag}-srv"
        self.workers = [f"cdp-{tag}-w{k + 1}" for k in range(workers)]
        self._links = [(f"c{tag}s{k + 1}", f"c{tag}w{k + 1}") for k in range(workers)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def server_address(self, worker: int) -> str:
        """Where worker host ``worker`` (0-based) reaches the server."""
        return f"{SUBNET}.{worker + 1}.1"

    def worker_address(self, worker: int) -> str:
        return f"{SUBNET}.{worker + 1}.2"

    def link(self, worker: int, *, server_side: bool) -> str:
        """The name of worker link ``worker``'s veth end on the server (or on the worker host)."""
        return self._links[worker][0 if server_side else 1]

    def create(self) -> Hosts:
        for name in (self.server, *self.workers):
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        for k, (server_end, worker_end) in enumerate(self._links):
            _ip("link", "add", server_end, "netns", self.server, "type", "veth", "peer", "name", worker_end,
                "netns", self.workers[k])
            _ip("-n", self.server, "addr", "add", f"{self.server_address(k)}/24", "dev", server_end)
            _ip("-n", self.workers[k], "addr", "add", f"{self.worker_address(k)}/24", "dev", worker_end)
            _ip("-n", self.server, "link", "set", server_end, "up")
            _ip("-n", self.workers[k], "link", "set", worker_end, "up")
        return self

    def set_link(self, worker: int, up: bool) -> None:
        """Cut worker host ``worker`` off the network (its link down), or bring it back."""
        _ip("-n", self.workers[worker], "link", "set", self._links[worker][1], "up" if up else "down")

    def start(self, namespace: str, args: list[str], *, env: dict[str, str], log: Path,
              clock_offset_s: int = 0) -> subprocess.Popen[bytes]:
        """Start ``args`` in ``namespace`` (its pid is the program's: ``ip netns exec`` execs it)."""
        prefix = ["ip", "netns", "exec", namespace]
        env = dict(env)
        if clock_offset_s:
            prefix += [faketime() or "faketime", "-f", f"{clock_offset_s:+d}s"]
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        with log.open("ab") as out:
            process = subprocess.Popen([*prefix, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    @contextlib.contextmanager
    def inside(self, namespace: str | None = None) -> Iterator[None]:
        """Run the calling thread's network calls in ``namespace`` (default: the server's)."""
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{namespace or self.server}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the server namespace failed")
            yield
        finally:
            libc.setns(own, CLONE_NEWNET)
            os.close(own)
            os.close(target)

    def destroy(self) -> None:
        from core.jobs.embedded import stop_process

        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, 18)  # SIGCONT: a frozen process cannot stop
                stop_process(process, timeout=10)
        for name in (self.server, *self.workers):  # deleting a namespace deletes its veth ends
            _ip("netns", "del", name, check=False)


ACCESS, SECRET, BUCKET = "netns-test", "netns-test-secret-key", "cdp"


def start_service(hosts: Hosts, var: Path, *, models: Path, settings: dict[str, str],
                  clock_offsets: dict[int, int] | None = None) -> list[subprocess.Popen[bytes]]:
    """Redis (:6379), moto's S3 server (:9000, bucket ``cdp`` with versioning on), the API (127.0.0.1:8000)
    and the control worker on the server namespace, one solo-pool worker of ``cdp.generate`` per worker
    namespace (``worker-<k>``, logs under ``var/logs``); ``clock_offsets`` maps a worker index to a clock
    offset in seconds. Call inside ``hosts.inside()``; returns the worker processes once all are ready."""
    import httpx
    from minio import Minio
    from minio.versioningconfig import ENABLED, VersioningConfig

    from core.jobs.embedded import find_redis_server, redis_answers

    logs = var / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    env.update({"CDP_STORE_BACKEND": "minio", "CDP_MINIO_ACCESS_KEY": ACCESS, "CDP_MINIO_SECRET_KEY": SECRET,
                "CDP_MINIO_BUCKET": BUCKET, "CDP_MODEL_DIR": str(models), "CDP_DATA_ROOT": str(var / "data"),
                "CDP_LOG_FORMAT": "json", "CDP_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **settings})
    on_server = {**env, "CDP_REDIS_URL": "redis://127.0.0.1:6379/0", "CDP_MINIO_ENDPOINT": "127.0.0.1:9000",
                 "CDP_WORK_DIR": str(var / "server-work")}
    celery = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo",
              "--loglevel", "INFO"]
    hosts.start(hosts.server, [find_redis_server(), "--bind", "0.0.0.0", "--port", "6379", "--save", "",
                               "--appendonly", "no", "--protected-mode", "no"], env=on_server,
                log=logs / "redis.log")
    hosts.start(hosts.server, [sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", "9000"],
                env=on_server, log=logs / "moto.log")
    _wait("redis", lambda: redis_answers("redis://127.0.0.1:6379/0"), 30)
    minio = Minio("127.0.0.1:9000", access_key=ACCESS, secret_key=SECRET, secure=False)

    def bucket_made() -> bool:
        try:
            minio.make_bucket(BUCKET)
            minio.set_bucket_versioning(BUCKET, VersioningConfig(ENABLED))
            return True
        except Exception:
            return False

    _wait("moto's S3 server", bucket_made, 60)
    hosts.start(hosts.server, [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host",
                               "127.0.0.1", "--port", "8000", "--log-level", "warning"],
                env=on_server, log=logs / "api.log")
    hosts.start(hosts.server, [*celery, "-Q", "cdp.control", "-n", "control@server", "-B", "--schedule",
                               str(var / "beat-schedule")], env=on_server, log=logs / "control.log")
    workers = []
    for k, namespace in enumerate(hosts.workers):
        server = hosts.server_address(k)
        name = f"worker-{k + 1}"
        worker_env = {**env, "CDP_REDIS_URL": f"redis://{server}:6379/0",
                      "CDP_MINIO_ENDPOINT": f"{server}:9000", "CDP_WORK_DIR": str(var / f"{name}-work")}
        args = [*celery, "-Q", "cdp.generate", "-n", f"{name}@host{k + 1}", "--prefetch-multiplier", "1"]
        workers.append(hosts.start(namespace, args, env=worker_env, log=logs / f"worker-{k + 1}.log",
                                   clock_offset_s=(clock_offsets or {}).get(k, 0)))

    def api_ready() -> bool:
        try:
            return httpx.get("http://127.0.0.1:8000/readyz", timeout=5).status_code == 200
        except Exception:
            return False

    _wait("the API", api_ready, 60)
    for name in [f"worker-{k + 1}" for k in range(len(workers))] + ["control"]:
        log = logs / f"{name}.log"
        _wait(f"{name} to be ready",
              lambda log=log: log.exists() and " ready." in log.read_text(errors="replace"), 120)
    return workers


def _wait(what: str, predicate: Callable[[], object], timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
