"""A real ``celery worker --pool prefork -c 2`` with Prometheus' multiprocess mode (PROMETHEUS_MULTIPROC_DIR):
the exporter of the worker's main process serves the sum over its pool children, and a generation job's
images are counted exactly once however its shards were spread over them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from core.jobs.embedded import free_port, stop_process
from core.jobs.queue import WORK_QUEUES
from core.settings import get_settings

pytestmark = pytest.mark.timeout(240)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_prefork_children_count_a_jobs_images_once(service_env, tiny_models: Path, tmp_path: Path,
                                                   store, redis_client) -> None:
    from api.app import create_app

    for name in ("unet-t", "cnn-t"):
        shutil.copytree(tiny_models / name, Path(service_env["CDP_MODEL_DIR"]) / name)
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    port = free_port()
    env = {**os.environ, **service_env, "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
           "CDP_WORKER_METRICS_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "worker.log"
    with open(log, "wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "prefork", "-c", "2",
             "-Q", ",".join(WORK_QUEUES), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
             "--prefetch-multiplier", "1", "-n", f"prefork-{port}@%h"],
            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        get_settings.cache_clear()
        with TestClient(create_app(get_settings(), store=store, redis_client=redis_client)) as client:
            body = {"dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 20, "steps": 2,
                    "schedule": "uniform", "batch_size": 8, "loss": "hnm", "lam": 10.0}  # shards 8, 8, 4
            job_id = client.post("/jobs/generate", json=body).json()["id"]
            deadline = time.monotonic() + 180
            while (job := client.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
        assert job["status"] == "succeeded", job["error"]
        samples = scrape(port)
    finally:
        stop_process(worker, timeout=30)
    images = samples[("cdp_worker_images_generated_total", (("dataset", "digits"), ("guided", "true")))]
    assert images == 20
    shards = samples[("cdp_worker_unit_seconds_count", (("outcome", "done"), ("task", "generate_shard")))]
    assert shards == 3
    # the values came from the pool's children through the multiprocess files, not the main process
    assert list(prom_dir.glob("counter_*.db"))
