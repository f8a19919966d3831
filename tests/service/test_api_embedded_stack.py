"""`cdp up`'s launcher: a private Redis, `celery -A worker.app worker` and uvicorn as child processes."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from core.cli.up import EmbeddedStack
from core.jobs.embedded import free_port

pytestmark = pytest.mark.timeout(180)


def test_embedded_stack_runs_a_job_and_stops(tmp_path: Path) -> None:
    stack = EmbeddedStack(var=tmp_path / "var", port=free_port())
    with stack:
        assert stack.redis is not None  # CDP_REDIS_URL is unset in tests: a private server
        http = httpx.Client(base_url=stack.base_url, timeout=30)
        assert http.get("/readyz").json()["checks"] == {"redis": "ok", "storage": "ok"}
        job = http.post("/jobs/train", json={"kind": "classifier", "dataset": "digits", "epochs": 1,
                                             "arch_options": {"width": 4, "feature_dim": 8},
                                             "eval_samples": 16, "eval_attack_steps": 1}).json()
        deadline = time.monotonic() + 150
        while job["status"] not in ("succeeded", "failed", "canceled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
            job = http.get(f"/jobs/{job['id']}").json()
        assert job["status"] == "succeeded", job["error"]
        assert (tmp_path / "var" / "store" / "jobs" / job["id"] / "manifest.json").is_file()
        processes = [p for _, p in stack.children]
    assert all(p.poll() is not None for p in processes)
    assert stack.redis is None
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{stack.base_url}/healthz", timeout=1)
