"""The FastAPI application factory: ``uvicorn --factory api.app:create_app``.

Layering (routes -> dependencies -> core.jobs): the app builds one store, one Redis client, one Celery
producer and one :class:`core.jobs.service.JobService` from the settings and keeps them on ``app.state``;
routes receive them through the ``Annotated`` dependencies of :mod:`api.deps`. Tasks are sent by name, so
neither torch nor ``worker`` is imported here.
"""

from __future__ import annotations

import logging
from functools import partial

from fastapi import FastAPI

from api import access, auth, console, docs, document, metrics, problems
from api.routes import dataset_uploads, datasets, health, jobs, models, pipelines, uploads
from api.session import Sessions
from core.jobs import waiting
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

Input is strict: an `integer` field takes a JSON integer written without a fraction (`2`, not `2.0`), a
`number` field a JSON number, a string a string. Rules between fields that JSON Schema cannot state are given
in each spec's description and answered with a 422 whose `errors[].type` is `cross_field`. A well-formed
reference to a model or job that does not exist is a 404, to one that is not finished or of the wrong kind a
409.

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
    access.use_log_format_on_uvicorn(settings.log_format)  # uvicorn set up its handlers before calling us
    app = FastAPI(title="Contrastive-DP service", version="0.1.0", description=DESCRIPTION,
                  docs_url=None, redoc_url=None)  # served offline by api.docs
    app.state.settings = settings
    app.state.store = store
    quotas = Quotas(client, concurrent_jobs=settings.quota_concurrent_jobs,
                    images_per_day=settings.quota_images_per_day,
                    epochs_per_day=settings.quota_epochs_per_day)
    enqueuer = Enqueuer(celery_app, repo.leases)
    waiting.attach(repo, enqueuer, settings.shard_size)  # a job canceled here settles its dependants
    app.state.service = JobService(repo=repo, enqueuer=enqueuer,
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
    secret = settings.session_secret.get_secret_value() if settings.session_secret else None
    sessions = Sessions(keys, secret)
    app.add_middleware(auth.Gate, keys=keys, sessions=sessions)
    problems.install(app)
    metrics.install(app, job_counts=metrics.JobCounts(repo, queues=(*WORK_QUEUES, CONTROL_QUEUE)))
    app.add_middleware(access.RequestId)  # outermost: every reply and log line of a request has its id
    app.include_router(jobs.router)
    app.include_router(pipelines.router)
    app.include_router(dataset_uploads.router)  # before /datasets/{id}
    app.include_router(datasets.router)
    app.include_router(models.router)
    app.include_router(health.router)
    docs.install(app)
    console.install(app, sessions)
    app.openapi = partial(document.openapi_document, app)  # type: ignore[method-assign]
    app.openapi()  # built now, from the settings and the data sets present at start (api/document.py)
    return app
