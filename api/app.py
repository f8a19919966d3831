"""The FastAPI application factory: ``uvicorn --factory api.app:create_app``.

Layering (routes -> dependencies -> core.jobs): the app builds one store, one Redis client, one Celery
producer and one :class:`core.jobs.service.JobService` from the settings and keeps them on ``app.state``;
routes receive them through the ``Annotated`` dependencies of :mod:`api.deps`. Tasks are sent by name, so
neither torch nor ``worker`` is imported here.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

from fastapi import FastAPI

from api import auth, metrics, problems
from api.routes import dataset_uploads, datasets, health, jobs, models, uploads
from core import specs
from core.jobs.apikeys import KeyRing
from core.jobs.dependencies import redis_client as redis_client_for
from core.jobs.queue import CONTROL_QUEUE, WORK_QUEUES, Enqueuer, make_celery
from core.jobs.quotas import Quotas
from core.jobs.records import JobRepository
from core.jobs.service import JobService
from core.logs import configure_logging
from core.settings import Settings, get_settings
from core.storage import ObjectStore, store_from_settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Contrastive-guided diffusion (Contrastive-DP) as a service: submit generation and training jobs, follow
their progress, read their metrics and download their artifacts. Jobs run on Celery workers; their outputs
land in object storage. Errors are RFC 9457 `application/problem+json`.

Authenticate with an API key (`Authorization: Bearer <key>`, from `cdp keys create`) when the server has
keys; a server without keys treats every caller as the one local team `anonymous`.
"""


def create_app(settings: Settings | None = None, *, store: ObjectStore | None = None,
               redis_client: object | None = None) -> FastAPI:
    settings = settings or get_settings()
    store = store or store_from_settings(settings)
    client = redis_client or redis_client_for(settings.redis_url)
    celery_app = make_celery(settings, main="cdp-api", read_results=False)  # sends by name, never reads
    repo = JobRepository(store, client, lease_ttl_s=settings.lease_ttl_s)

    configure_logging(settings.log_format)
    app = FastAPI(title="Contrastive-DP service", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    app.state.store = store
    quotas = Quotas(client, concurrent_jobs=settings.quota_concurrent_jobs,
                    images_per_day=settings.quota_images_per_day,
                    epochs_per_day=settings.quota_epochs_per_day)
    app.state.service = JobService(repo=repo, enqueuer=Enqueuer(celery_app, repo.leases),
                                   model_dir=settings.model_dir, shard_size=settings.shard_size,
                                   data_root=settings.data_root, quotas=quotas)
    keys = KeyRing(settings.api_keys_file, settings.api_tokens)
    if settings.api_tokens:
        log.warning("CDP_API_TOKENS (plaintext tokens) is deprecated: move its teams to hashed keys with "
                    "`cdp keys create --team T --file PATH` and set CDP_API_KEYS_FILE")
    if not keys.enabled:
        log.info("no API keys (CDP_API_KEYS_FILE unset): auth is off, every caller is the local team %r",
                 auth.ANONYMOUS)
    # Innermost first: bodies over CDP_MAX_BODY_BYTES are refused (413), but only after the key was checked
    # (Gate: 401 before any body is read); CatchAll answers what escapes; Observe counts every request.
    app.state.max_body_bytes = settings.max_body_bytes
    app.add_middleware(auth.BodyLimit, max_bytes=settings.max_body_bytes, upload_paths=uploads.UPLOAD_PATHS,
                       max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(auth.Gate, keys=keys)
    problems.install(app)
    metrics.install(app, job_counts=metrics.JobCounts(repo, queues=(*WORK_QUEUES, CONTROL_QUEUE)))
    app.include_router(jobs.router)
    app.include_router(dataset_uploads.router)  # before /datasets/{id}
    app.include_router(datasets.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.openapi = partial(openapi_document, app)  # type: ignore[method-assign]
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with each error response in ``application/problem+json`` only (as served)."""
    if app.openapi_schema is None:
        document = FastAPI.openapi(app)
        for item in document["paths"].values():
            for operation in item.values():
                responses = operation.get("responses", {})
                for status, response in list(responses.items()):
                    content = response.get("content", {})
                    if status[0] in "45" and problems.PROBLEM_JSON in content:
                        content.pop("application/json", None)
                    elif status == "422":  # FastAPI's default for a route that cannot answer 422
                        del responses[status]
        schemas = document.get("components", {}).get("schemas", {})
        _document_server_limits(schemas, app.state.settings)
        text = json.dumps(document["paths"])
        for unused in ("HTTPValidationError", "ValidationError"):
            if f"#/components/schemas/{unused}" not in text:
                schemas.pop(unused, None)
        app.openapi_schema = document
    return app.openapi_schema


def _document_server_limits(schemas: dict[str, Any], settings: Settings) -> None:
    """The CDP_MAX_* bounds of this server as ``maximum`` of the fields they bound (count, steps, ...)."""
    for schema in schemas.values():
        for name, prop in schema.get("properties", {}).items():
            setting = specs.SERVER_LIMITS.get(name)
            if setting is None:
                continue
            for branch in prop.get("anyOf", [prop]):
                if branch.get("type") in ("integer", "number"):
                    branch["maximum"] = getattr(settings, setting)
