"""Prometheus metrics of the API process (served at ``GET /metrics``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

JOBS_SUBMITTED = Counter("cdp_jobs_submitted_total", "Jobs accepted by the API", ["kind"])
REQUESTS = Counter("cdp_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("cdp_http_request_seconds", "HTTP request latency", ["method", "route"])


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
