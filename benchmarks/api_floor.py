"""The floor of ``benchmarks/api_submit.py``: a bare FastAPI app whose ``POST /jobs/generate`` parses the JSON
body loosely and only sends one Celery message by name, with the service's own Celery configuration. It
is served by the same uvicorn, with the same settings and the same Redis as the real app, so the difference
between the two is what the real route adds (checks, the durable record, the Redis mirror, unit marks).

    uvicorn --factory benchmarks.api_floor:create_app      # from the repository root
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, FastAPI

from core.jobs import task_names
from core.jobs.queue import GENERATE_QUEUE, make_celery
from core.jobs.records import new_job_id
from core.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    celery_app = make_celery(settings, main="cdp-floor")
    app = FastAPI(title="Contrastive-DP submit floor")

    @app.post("/jobs/generate", status_code=202)
    def create_generate_job(body: Annotated[dict[str, Any], Body()]) -> dict[str, str]:
        job_id = new_job_id()
        celery_app.send_task(task_names.GENERATE_SHARD, args=[job_id, 0], queue=GENERATE_QUEUE)
        return {"id": job_id, "status": "queued"}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ok"}

    return app
