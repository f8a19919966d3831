"""Schemathesis with every check against the live OpenAPI document of a real uvicorn server with API keys:
no failure of any kind. CI runs a reduced example count (CDP_SCHEMATHESIS_EXAMPLES, default 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.jobs.apikeys import create_key
from core.settings import get_settings
from tests.service.serving import served

pytestmark = pytest.mark.timeout(300)
HERE = Path(__file__).parent


@pytest.fixture
def keyed_server(service_env, monkeypatch, tmp_path, store, redis_client) -> Iterator[tuple[str, str]]:
    from api.app import create_app

    keys = tmp_path / "keys.json"
    _, key = create_key(keys, team="team-a")
    monkeypatch.setenv("CDP_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("CDP_QUOTA_CONCURRENT_JOBS", "20")
    monkeypatch.setenv("CDP_MAX_WAIT_SECONDS", "0.2")  # no worker runs: every ?wait= would wait it out
    get_settings.cache_clear()
    for name in ("digits-unet", "digits-cnn"):
        (get_settings().model_dir / name).mkdir(exist_ok=True)
    app = create_app(get_settings(), store=store, redis_client=redis_client)
    with served(app) as url:
        yield url, key


def test_schemathesis_finds_nothing(keyed_server: tuple[str, str], tmp_path: Path) -> None:
    url, key = keyed_server
    examples = os.environ.get("CDP_SCHEMATHESIS_EXAMPLES", "8")
    cli = Path(sys.executable).with_name("schemathesis")
    done = subprocess.run(
        [str(cli), "--no-color", "--config-file", str(HERE / "schemathesis.toml"), "run",
         f"{url}/openapi.json",
         "--checks", "all", "--max-examples", examples, "--seed", "1", "--workers", "1",
         "--header", f"Authorization: Bearer {key}", "--request-timeout", "20",
         "--exclude-path-regex", "/events$", "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=280, check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
