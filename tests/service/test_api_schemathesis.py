"""Schemathesis with every check and every phase (examples, coverage, fuzzing, stateful) against the live
OpenAPI document of a real uvicorn server with API keys and nothing in it yet (no models, no jobs): no
failure of any kind, at schemathesis' default expected statuses. A reduced example count here
(CDP_SCHEMATHESIS_EXAMPLES, default 2); ``make schemathesis`` runs the full form against a fresh embedded
stack (tests/service/schemathesis_run.py)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.jobs.apikeys import create_key
from core.settings import get_settings
from tests.service.schemathesis_hooks import is_documented_rejection
from tests.service.schemathesis_run import schemathesis_command, schemathesis_env
from tests.service.serving import served

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def keyed_server(service_env, monkeypatch, tmp_path, store, redis_client) -> Iterator[tuple[str, str]]:
    from api.app import create_app

    keys = tmp_path / "keys.json"
    _, key = create_key(keys, team="team-a")
    monkeypatch.setenv("CDP_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("CDP_QUOTA_CONCURRENT_JOBS", "20")
    monkeypatch.setenv("CDP_MAX_WAIT_SECONDS", "0.2")  # no worker runs: every ?wait= would wait it out
    get_settings.cache_clear()
    app = create_app(get_settings(), store=store, redis_client=redis_client)
    with served(app) as url:
        yield url, key


def test_schemathesis_finds_nothing(keyed_server: tuple[str, str], tmp_path: Path) -> None:
    url, key = keyed_server
    examples = int(os.environ.get("CDP_SCHEMATHESIS_EXAMPLES", "2"))
    done = subprocess.run(schemathesis_command(url, key, examples=examples, seed=1),
                          capture_output=True, text=True, timeout=280, check=False, cwd=tmp_path,
                          env=schemathesis_env())
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout or "passed" in done.stdout, done.stdout[-3000:]


def test_the_hook_drops_only_rejections_the_document_announces() -> None:
    def reply(*errors: tuple[str, str]) -> bytes:
        return json.dumps({"status": 422, "errors": [{"field": f, "type": t} for f, t in errors]}).encode()

    cross, key = ("body", "cross_field"), ("header.Idempotency-Key", "idempotency_conflict")
    count = ("body.arms.0.count", "int_type")
    assert is_documented_rejection(422, reply(cross))
    assert is_documented_rejection(422, reply(key))
    assert is_documented_rejection(422, reply(count, cross), {"arms": [{"count": 3.0}]})
    assert not is_documented_rejection(422, reply(count), {"arms": [{"count": 3.5}]})
    assert not is_documented_rejection(422, reply(count), {"arms": [{"count": "3"}]})
    assert not is_documented_rejection(422, reply(count), {"arms": []})
    assert not is_documented_rejection(422, reply(cross, ("body.count", "less_than")))
    assert not is_documented_rejection(404, reply(cross))
    assert not is_documented_rejection(422, b'{"status": 422}')
    assert not is_documented_rejection(422, b"not json")
