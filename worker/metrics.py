"""Prometheus metrics of the workers (prometheus_client), and their exporter.

- ``cdp_worker_images_generated_total{dataset, guided}``: images written in generation shards.
- ``cdp_worker_unit_seconds{task, outcome}``: wall time of each unit (shard, finalize, train, ...).
- ``cdp_worker_guided_step_seconds``: a shard's sampling time per DDIM step (all its batches), guided
  shards only (``loss`` other than ``none``).
- ``cdp_worker_unit_failures_total{task}``: units that ended their job as failed.
- ``cdp_worker_lease_expiries_total``: units the reconciler re-enqueued because their lease expired.

``CDP_WORKER_METRICS_PORT`` starts an HTTP exporter in the worker's main process when it is ready. Under
Celery's prefork pool the tasks run in child processes: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory (prometheus_client's multiprocess mode) and the exporter serves the sum over all of them. With the
solo pool (the embedded stack, the tests) the process's default registry is served.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

IMAGES_GENERATED = Counter("cdp_worker_images_generated_total", "Images generated (written in shards)",
                           ["dataset", "guided"])
UNIT_SECONDS = Histogram("cdp_worker_unit_seconds", "Wall time of one unit of work", ["task", "outcome"],
                         buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf")))
GUIDED_STEP_SECONDS = Histogram("cdp_worker_guided_step_seconds",
                                "Sampling seconds per DDIM step of a guided shard (all its batches)",
                                buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, float("inf")))
UNIT_FAILURES = Counter("cdp_worker_unit_failures_total", "Units that failed their job", ["task"])
LEASE_EXPIRIES = Counter("cdp_worker_lease_expiries_total",
                         "Units re-enqueued by the reconciler after their lease expired")


def registry() -> CollectorRegistry:
    """What the exporter serves: every process's values in multiprocess mode, else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return merged
    return REGISTRY


def start_exporter(port: int, *, addr: str = "0.0.0.0") -> Any:
    """Serve the metrics on ``port`` (0: any free port) from a daemon thread; returns the server
    (``server_port``, ``shutdown()``)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry())
    log.info("worker metrics on port %d", server.server_port)
    return server


def process_exited(pid: int) -> None:
    """A pool child exited: drop its live gauges (multiprocess mode only)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
