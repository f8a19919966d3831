"""Unexpected errors and unreachable dependencies, served by a real uvicorn on loopback: a 500 leaves the
keep-alive connection usable, Redis and store errors are 503 problems with Retry-After, and no reply names
a server path or address."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis
from fastapi import FastAPI

from api import problems
from core.storage import ObjectNotFound, StorageError
from tests.service.serving import served


@pytest.fixture
def server() -> Iterator[str]:
    app = FastAPI()
    problems.install(app)

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("/srv/secret/path went wrong")

    @app.get("/redis-down")
    def redis_down() -> dict:
        raise redis.ConnectionError("Error 111 connecting to 10.1.2.3:6379. Connection refused.")

    @app.get("/store-down")
    def store_down() -> dict:
        raise StorageError("cannot write 'jobs/x/job.json': [Errno 30] Read-only file system: '/srv/store'")

    @app.get("/missing")
    def missing() -> dict:
        raise ObjectNotFound("jobs/x/metrics.json")

    @app.get("/ok")
    def ok() -> dict:
        return {"ok": True}

    with served(app) as url:
        yield url


def test_a_500_keeps_the_connection_usable(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        for _ in range(3):
            failed = http.get("/boom")
            assert failed.status_code == 500
            assert failed.headers["content-type"].startswith("application/problem+json")
            assert "/srv/secret" not in failed.text and failed.json()["detail"] == "RuntimeError"
            assert http.get("/ok").json() == {"ok": True}  # same pooled connection, not reset


@pytest.mark.parametrize(("path", "slug", "word"), [("/redis-down", "redis-unavailable", "Redis"),
                                                    ("/store-down", "storage-unavailable", "object store")])
def test_dependencies_down_are_503_with_retry_after(server: str, path: str, slug: str, word: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        reply = http.get(path)
        assert reply.status_code == 503
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert int(reply.headers["Retry-After"]) > 0
        body = reply.json()
        assert body["type"] == f"/problems/{slug}" and word in body["detail"]
        assert "10.1.2.3" not in reply.text and "/srv" not in reply.text
        assert http.get("/ok").status_code == 200


def test_a_missing_object_a_route_did_not_expect_is_a_500_not_a_503(server: str) -> None:
    reply = httpx.get(server + "/missing", timeout=10)
    assert reply.status_code == 500 and "jobs/x" not in reply.text


def test_an_idempotency_key_first_used_while_the_store_fails_is_released(settings, redis_client) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from core.storage import MemoryStore

    store = MemoryStore()
    body = {"dataset": "digits", "model": "job:0190a1b2c3d4e5f6a7b8c9d0", "classifier": "cnn", "count": 2}
    (settings.model_dir / "cnn").mkdir(parents=True, exist_ok=True)
    with TestClient(create_app(settings, store=store, redis_client=redis_client)) as client:
        # a finished diffusion job to refer to
        from core.jobs.records import JobRepository

        repo = JobRepository(store, redis_client)
        source = repo.create(kind="train", owner="anonymous", input={"kind": "diffusion"},
                             job_id="0190a1b2c3d4e5f6a7b8c9d0")
        repo.finish(source.id, "succeeded")
        store.fail_with = StorageError("cannot write: disk full")
        refused = client.post("/jobs/generate", json=body, headers={"Idempotency-Key": "k1"})
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert "object store" in refused.json()["detail"] and "disk full" not in refused.text
        store.fail_with = None
        accepted = client.post("/jobs/generate", json=body, headers={"Idempotency-Key": "k1"})
        assert accepted.status_code == 202, accepted.text
        replay = client.post("/jobs/generate", json=body, headers={"Idempotency-Key": "k1"})
        assert replay.json()["id"] == accepted.json()["id"]
        jobs = client.get("/jobs").json()["items"]
        assert [j["id"] for j in jobs] == [accepted.json()["id"], source.id]
