"""uvicorn's access log in the JSON format of the application logs, with the request id: a real
``uvicorn --factory api.app:create_app`` process (as ``cdp up`` and the API image start it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.jobs.embedded import free_port, stop_process, wait_http_ready

pytestmark = pytest.mark.timeout(120)


def test_access_and_application_lines_are_json_with_the_request_id(service_env, tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "api.log"
    env = {**os.environ, **service_env, "CDP_LOG_FORMAT": "json",
           "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    with open(out, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "info"], env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_http_ready(base, timeout=60, alive=lambda: None, interval=0.2), out.read_text()
        with httpx.Client(base_url=base, timeout=10) as http:
            probe = http.get("/healthz", headers={"X-Request-Id": "probe-1"})
            job = http.post("/jobs/train", headers={"X-Request-Id": "submit-2"},
                            json={"kind": "classifier", "dataset": "digits", "epochs": 1})
            bad = http.get("/healthz", headers={"X-Request-Id": "no spaces allowed"})
    finally:
        stop_process(process, timeout=20)
    assert probe.headers["x-request-id"] == "probe-1"
    assert job.status_code == 202 and job.headers["x-request-id"] == "submit-2"
    generated = bad.headers["x-request-id"]
    assert generated != "no spaces allowed" and len(generated) == 32

    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]  # all JSON
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    by_id = {line.get("request_id"): line for line in access}
    assert by_id["probe-1"]["path"] == "/healthz" and by_id["probe-1"]["status"] == 200
    assert by_id["probe-1"]["method"] == "GET" and by_id["probe-1"]["level"] == "info"
    assert by_id["submit-2"]["path"] == "/jobs/train" and by_id["submit-2"]["status"] == 202
    assert generated in by_id
    accepted = [line for line in lines if line["message"].startswith("accepted a train job")]
    assert accepted and accepted[0]["request_id"] == "submit-2"
    assert accepted[0]["job_id"] == job.json()["id"]
    assert any(line["logger"].startswith("uvicorn") and "Uvicorn running" in line["message"]
               for line in lines)
