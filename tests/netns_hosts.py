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
from collections.abc import Iterator
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
