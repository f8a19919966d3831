"""The FastAPI application factory: ``uvicorn --factory api.app:create_app``.

Layering (routes -> dependencies -> core.jobs): the app builds one store, one Redis client, one Celery
producer and one :class:`core.jobs.service.JobService` from the settings and keeps them on ``app.state``;
routes receive them through the ``Annotated`` dependencies of :mod:`api.deps`. Tasks are sent by name, so
neither torch nor ``worker`` is imported here.
"""

from __future__ import annotations

from fastapi import FastAPI

from api import metrics, problems
from api.routes import health, jobs
from core.jobs.queue import Enqueuer, make_celery
from core.jobs.records import JobRepository
from core.jobs.records import redis_client as redis_client_for
from core.jobs.service import JobService
from core.settings import Settings, get_settings
from core.storage import ObjectStore, store_from_settings

DESCRIPTION = """
Contrastive-guided diffusion (Contrastive-DP) as a service: submit generation and training jobs, follow
their progress, read their metrics and download their artifacts. Jobs run on Celery workers; their outputs
land in object storage. Errors are RFC 9457 `application/problem+json`.
"""


def create_app(settings: Settings | None = None, *, store: ObjectStore | None = None,
               redis_client: object | None = None) -> FastAPI:
    settings = settings or get_settings()
    store = store or store_from_settings(settings)
    client = redis_client or redis_client_for(settings.redis_url)
    celery_app = make_celery(settings, main="cdp-api")
    repo = JobRepository(store, client, lease_ttl_s=settings.lease_ttl_s)

    app = FastAPI(title="Contrastive-DP service", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    app.state.store = store
    app.state.redis = client
    app.state.service = JobService(repo=repo, enqueuer=Enqueuer(celery_app, repo.leases),
                                   model_dir=settings.model_dir, shard_size=settings.shard_size)
    problems.install(app)
    metrics.install(app)
    app.include_router(jobs.router)
    app.include_router(health.router)
    return app
