"""Observability: worker metrics for Prometheus (images generated), JSON log lines that name the job, and
the API's queue depth and jobs-by-status gauges."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
from prometheus_client import REGISTRY

from core.logs import ContextFilter, JsonFormatter, bind

pytestmark = pytest.mark.timeout(240)


def images_generated() -> float:
    return REGISTRY.get_sample_value("cdp_worker_images_generated_total",
                                     {"dataset": "digits", "guided": "true"}) or 0.0


def test_worker_metrics_count_the_generated_images_and_logs_name_the_job(
    stack, caplog: pytest.LogCaptureFixture
) -> None:
    from worker import metrics

    caplog.set_level(logging.INFO)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    before = images_generated()
    try:
        body = {"dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 12, "steps": 2,
                "schedule": "uniform", "batch_size": 8, "loss": "hnm", "lam": 10.0}  # 2 shards of 8 and 4
        job_id = stack.client.post("/jobs/generate", json=body).json()["id"]
        assert stack.wait(job_id, until={"succeeded", "failed"})["status"] == "succeeded"
    finally:
        logging.getLogger().removeHandler(handler)
    assert images_generated() - before == 12

    exporter = metrics.start_exporter(0, addr="127.0.0.1")
    try:
        text = httpx.get(f"http://127.0.0.1:{exporter.server_port}/metrics", timeout=10).text
    finally:
        exporter.shutdown()
    assert 'cdp_worker_images_generated_total{dataset="digits",guided="true"}' in text
    assert 'cdp_worker_unit_seconds_count{outcome="done",task="generate_shard"}' in text
    assert "cdp_worker_guided_step_seconds_count" in text

    events = [json.loads(line) for line in lines.getvalue().splitlines()]
    shard_lines = [e for e in events if e.get("unit") == "shard-1"]
    assert shard_lines and all(e["job_id"] == job_id and e["owner"] == "anonymous" and e["attempt"] == 1
                               for e in shard_lines)
    assert any(e.get("job_id") == job_id and e["logger"] == "core.jobs.service" for e in events)


def test_api_metrics_show_queue_depth_and_jobs_by_status(client) -> None:
    client.post("/jobs/train", json={"kind": "classifier", "dataset": "digits", "epochs": 1})
    client.post("/jobs/train", json={"kind": "classifier", "dataset": "digits", "epochs": 1,
                                     "priority": "low"})
    text = client.get("/metrics").text
    assert 'cdp_queue_depth{queue="cdp.train"} 2.0' in text  # both priority lists of the train queue
    assert 'cdp_queue_depth{queue="cdp.generate"} 0.0' in text
    assert 'cdp_jobs{kind="train",status="queued"} 2.0' in text


def test_json_log_lines_carry_the_bound_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    with bind(job_id="j1", unit="train", owner="team-a", attempt=2):
        line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello you" and line["level"] == "info"
    assert (line["job_id"], line["unit"], line["owner"], line["attempt"]) == ("j1", "train", "team-a", 2)
    assert "job_id" not in json.loads(JsonFormatter().format(record))
