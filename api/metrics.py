"""Prometheus metrics of the API process (served at ``GET /metrics``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, get_args

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.types import Message, Receive, Scope, Send

from api.asgi import HttpMiddleware
from core.jobs.queue import queue_keys
from core.specs import JobKind, JobStatus

log = logging.getLogger(__name__)

JOBS_SUBMITTED = Counter("cdp_jobs_submitted_total", "Jobs accepted by the API", ["kind"])
REQUESTS = Counter("cdp_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("cdp_http_request_seconds", "HTTP request latency", ["method", "route"])
_UNFINISHED: tuple[JobStatus, ...] = ("waiting", "queued", "running")


class Observe(HttpMiddleware):
    """Counts each HTTP request and observes its latency up to the start of the response (as
    ``@app.middleware("http")`` did, but as plain ASGI: Starlette's BaseHTTPMiddleware runs every request
    through an extra task and memory streams, a measurable cost on the submit path)."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", "unmatched")
                REQUESTS.labels(scope["method"], route, str(message["status"])).inc()
                LATENCY.labels(scope["method"], route).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, observing_send)


class JobCounts:
    """A collector read at scrape time: messages waiting per Celery queue (Redis list length) and the
    unfinished jobs by kind and status (from the store's ``active/`` markers, at most ``max_jobs`` of them:
    a scrape costs one record read per unfinished job, from Redis)."""

    def __init__(self, repo: Any, *, queues: tuple[str, ...], max_jobs: int = 10_000) -> None:
        self.repo, self.queues, self.max_jobs = repo, queues, max_jobs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("cdp_queue_depth", "Messages waiting in a Celery queue", labels=["queue"])
        jobs = GaugeMetricFamily("cdp_jobs", "Unfinished jobs by kind and status", labels=["kind", "status"])
        try:
            for queue in self.queues:  # one Redis list per priority step (core.jobs.queue.queue_keys)
                depth.add_metric([queue], float(self.repo.queue_depth(queue_keys(queue))))
            counts: dict[tuple[str, str], int] = {}
            for n, job_id in enumerate(self.repo.active_ids()):
                if n >= self.max_jobs:
                    break
                try:
                    job = self.repo.get(job_id)
                except Exception:  # vanished meanwhile
                    continue
                counts[(job.kind, job.status)] = counts.get((job.kind, job.status), 0) + 1
            for kind in get_args(JobKind):
                for status in _UNFINISHED:
                    jobs.add_metric([kind, status], float(counts.get((kind, status), 0)))
        except Exception as exc:  # a dependency is down: the scrape still answers, without these
            log.warning("metrics: job counts unavailable: %s", type(exc).__name__)
            return
        yield depth
        yield jobs


def install(app: FastAPI, *, job_counts: JobCounts | None = None) -> None:
    """``GET /metrics``: the process's metrics and, when given, the job counts. With API keys on, only an
    admin key may read it (api.auth.Gate), since the counts cover every team."""
    app.add_middleware(Observe)
    extra = CollectorRegistry(auto_describe=False)
    if job_counts is not None:
        extra.register(job_counts)  # type: ignore[arg-type]

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest() + generate_latest(extra), media_type=CONTENT_TYPE_LATEST)
