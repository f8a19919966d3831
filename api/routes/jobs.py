"""The /jobs routes: thin handlers that delegate to :class:`core.jobs.service.JobService`.

Per job kind, two tables: :data:`SUBMISSIONS` (its ``POST /jobs/<kind>`` route) and :data:`TYPED_METRICS`
(the typed field of its ``GET /jobs/{id}/metrics``); both must name every :data:`core.specs.JobKind`.
:data:`SUBMIT_ERRORS` says how a refused submission is answered (shared with ``POST /pipelines``); the
response models are in :mod:`api.schemas`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, get_args

import anyio
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ValidationError
from starlette.convertors import Convertor, register_url_convertor

from api import metrics as prom
from api.deps import CallerDep, RepoDep, ServiceDep, SettingsDep, StoreDep
from api.document import artifact_content, artifact_media_type
from api.problems import FieldError, ProblemError, responses
from api.schemas import (
    Artifact,
    ArtifactList,
    EvaluationMetrics,
    ExperimentResult,
    GenerationMetrics,
    JobMetrics,
    JobPage,
    TrainingMetrics,
)
from api.waiting import EVENT_STREAM_RESPONSE, ChildEvents, Follow, PollSeconds, follow, job_view, long_poll
from core.jobs import keys
from core.jobs.errors import (
    IdempotencyBusy,
    IdempotencyConflict,
    InvalidReference,
    JobNotFound,
    JobsError,
    PipelineInvalid,
    QuotaExceeded,
)
from core.jobs.records import JobRepository
from core.jobs.service import JobService
from core.specs import (
    JOB_ID_PATTERN,
    EvaluateSpec,
    ExperimentSpec,
    GenerateSpec,
    JobKind,
    JobRecord,
    JobStatus,
    TrainSpec,
)
from core.storage import ObjectNotFound, ObjectStore


class JobIdConvertor(Convertor[str]):
    """``{job_id:jobid}``: a path segment of 24 hex digits. Other segments match no job route, so
    ``GET /jobs/train`` is a 405 (only POST exists there) and ``GET /jobs/nope`` a 404."""

    regex = JOB_ID_PATTERN

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("jobid", JobIdConvertor())
router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=rf"^{JOB_ID_PATTERN}$", description="job id (24 hex digits)",
                            examples=["0190a1b2c3d4e5f6a7b8c9d0"])]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]{1,128}$",
           description="Same key and same body return the same job; a different body is a 422 (kept 48 h, "
                       "per team). 1 to 128 letters, digits, '.', '_', ':', '-' (e.g. a UUID).",
           examples=["gen-2026-01-01-a"]),
]

# What a submission can answer besides 202, and the 202's Location header.
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Accepted: the job is queued",
          "headers": {"Location": {"description": "the job's URL, `/jobs/<id>`",
                                   "schema": {"type": "string"}}}},
    **responses(400, 401, 404, 409, 413, 422, 429, 503),
}
SUBMIT_RESPONSES[404]["description"] = ("A referenced model or job does not exist (or is not yours): "
                                        "`errors[].field` names the field")
SUBMIT_RESPONSES[409]["description"] = ("A referenced job is not finished or not of the right kind "
                                        "(`errors[].field` names the field), or a request with the same "
                                        "Idempotency-Key is still being processed")


def _job_or_404(repo: JobRepository, job_id: str, owner: str | None) -> JobRecord:
    try:
        return repo.get(job_id, owner=owner)
    except JobNotFound:
        raise ProblemError(404, "Not found", f"no job {job_id}", slug="job-not-found") from None


def _created(response: Response, job: JobRecord) -> JobRecord:
    response.headers["Location"] = job.links.self
    return job


# A submission blocks on the store and Redis (fsyncs and round trips of a few ms); it runs in a worker thread,
# at most SUBMIT_THREADS of them at a time per event loop, waiting in line (first come, first served) for one
# beyond that. Under 50 concurrent clients, FastAPI's default of 40 threads only made them contend for the
# GIL: more CPU per request and a longer tail (benchmarks/api_submit.py). The other routes keep the default
# threadpool, so a slow submission never holds up reads or the health probes.
SUBMIT_THREADS = 8
_submit_limiter: RunVar[anyio.CapacityLimiter] = RunVar("cdp_submit_limiter")


def submit_limiter() -> anyio.CapacityLimiter:
    """The limiter of submission threads of the running event loop."""
    try:
        return _submit_limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(SUBMIT_THREADS)
        _submit_limiter.set(limiter)
        return limiter


def for_every_kind(table: Mapping[str, Any], name: str) -> None:
    """Fail at import, naming the table and the kinds, unless ``table`` has an entry for every job kind of
    :data:`core.specs.JobKind` and for nothing else (a kind added there must be added here too)."""
    missing, extra = set(get_args(JobKind)) - set(table), set(table) - set(get_args(JobKind))
    if missing or extra:
        raise RuntimeError(f"{name}: no entry for the job kinds {sorted(missing)}" if missing
                           else f"{name}: entries for {sorted(extra)}, which are not job kinds")


# --- refused submissions: error class -> the problem answered (status, type, headers, field) ---
def _invalid_reference(exc: InvalidReference) -> ProblemError:
    """404: absent; 409: not usable now; 422: a data set the server lacks (``exc.status`` says which)."""
    title = {404: "Reference not found", 409: "Reference not usable"}.get(exc.status, "Invalid reference")
    return ProblemError(exc.status, title, exc.message, slug=exc.slug,
                        errors=[FieldError(field="body." + ".".join(str(p) for p in exc.loc),
                                           message=exc.message, type="invalid_reference")])


SUBMIT_ERRORS: dict[type[JobsError], Callable[[Any], Exception]] = {
    InvalidReference: _invalid_reference,
    QuotaExceeded: lambda exc: ProblemError(
        429, "Quota exceeded", exc.message, slug=f"quota-{exc.quota.replace('_', '-')}",
        headers={"Retry-After": str(exc.retry_after_s)}),
    IdempotencyBusy: lambda exc: ProblemError(
        409, "Request in progress", str(exc), slug="idempotency-in-progress", headers={"Retry-After": "1"}),
    IdempotencyConflict: lambda exc: ProblemError(
        422, "Idempotency key reused", str(exc), slug="idempotency-conflict",
        errors=[FieldError(field="header.Idempotency-Key", message=str(exc), type="idempotency_conflict")]),
    # a pipeline's steps that do not validate: the 422 of any other invalid body, at the steps' paths
    PipelineInvalid: lambda exc: RequestValidationError(
        [{**error, "loc": ("body", *error["loc"])} for error in exc.errors]),
}
SUBMIT_ERROR_TYPES = tuple(SUBMIT_ERRORS)  # for ``except``


def submit_problem(exc: JobsError) -> Exception:
    """What a route raises for a refused submission ``exc`` (one of :data:`SUBMIT_ERROR_TYPES`)."""
    answer = next(SUBMIT_ERRORS[cls] for cls in type(exc).__mro__ if cls in SUBMIT_ERRORS)
    return answer(exc)


async def _submit(kind: JobKind, call: Callable[[], tuple[JobRecord, bool]], response: Response) -> JobRecord:
    try:
        job, created = await anyio.to_thread.run_sync(call, limiter=submit_limiter())
    except SUBMIT_ERROR_TYPES as exc:
        raise submit_problem(exc) from None
    if created:
        prom.JOBS_SUBMITTED.labels(kind=kind).inc()
    return _created(response, job)


# --- POST /jobs/<kind>: one route per kind, from this table ---
@dataclass(frozen=True)
class Submission:
    """A kind's submission route: ``POST /jobs/<kind>`` with a ``spec`` body, answered by ``submit`` (the
    JobService method of that kind)."""

    spec: type[BaseModel]
    submit: Callable[..., tuple[JobRecord, bool]]
    operation_id: str
    summary: str


SUBMISSIONS: dict[JobKind, Submission] = {
    "generate": Submission(GenerateSpec, JobService.submit_generate, "createGenerateJob",
                           "Generate synthetic images with contrastive guidance"),
    "train": Submission(TrainSpec, JobService.submit_train, "createTrainJob",
                        "Train a diffusion model, a classifier, or TRADES"),
    "evaluate": Submission(EvaluateSpec, JobService.submit_evaluate, "createEvaluateJob",
                           "Clean and adversarial accuracy (PGD-CE, PGD-CW, AutoAttack) of a finished model"),
    "experiment": Submission(ExperimentSpec, JobService.submit_experiment, "createExperimentJob",
                             "Compare arms (real only, + synthetic sets) over seeds: TRADES, evaluation, "
                             "statistics"),
}
for_every_kind(SUBMISSIONS, "SUBMISSIONS")


def _submission_handler(kind: JobKind, submission: Submission) -> Callable[..., Any]:
    async def handler(spec: Any, service: ServiceDep, caller: CallerDep, response: Response,
                      idempotency_key: IdempotencyKey = None) -> JobRecord:
        submit = partial(submission.submit, service, spec, owner=caller.team, idempotency_key=idempotency_key)
        return await _submit(kind, submit, response)

    handler.__annotations__["spec"] = Annotated[submission.spec, Body()]  # the body's model, for FastAPI
    handler.__name__ = handler.__qualname__ = f"create_{kind}_job"  # the route's name, as before the table
    return handler


for _kind, _submission in SUBMISSIONS.items():
    router.add_api_route(f"/{_kind}", _submission_handler(_kind, _submission), methods=["POST"],
                         status_code=202, response_model=JobRecord, operation_id=_submission.operation_id,
                         summary=_submission.summary, responses=SUBMIT_RESPONSES)


@router.get("", response_model=JobPage, operation_id="listJobs", summary="List your jobs, newest first",
            responses=responses(401, 422, 503))
def list_jobs(
    repo: RepoDep, caller: CallerDep,
    kind: JobKind | None = None, status: JobStatus | None = None,
    parent: Annotated[str | None, Query(pattern=rf"^{JOB_ID_PATTERN}$",
                                        description="only the child jobs of this experiment")] = None,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
    page_token: Annotated[str | None, Query(pattern=rf"^{JOB_ID_PATTERN}$")] = None,
) -> JobPage:
    items, token = repo.list(owner=caller.scope, kind=kind, status=status, page_size=page_size,
                             page_token=page_token, parent=parent)
    return JobPage(items=items, next_page_token=token)


WaitSeconds = Annotated[float, Query(ge=0, le=3600, description="long-poll: answer once the job is "
                                     "finished or after this many seconds, whichever is first (at most "
                                     "CDP_MAX_WAIT_SECONDS; 0: at once)")]


@router.get("/{job_id:jobid}", response_model=JobRecord, operation_id="getJob", summary="One job",
            responses=responses(401, 404, 422, 503))
async def get_job(job_id: JobId, repo: RepoDep, caller: CallerDep, settings: SettingsDep,
                  wait: WaitSeconds = 0) -> JobRecord:
    read = partial(job_view, repo, job_id, caller.scope, settings.shard_size)
    return await long_poll(read, min(wait, settings.max_wait_seconds))


@router.post("/{job_id:jobid}/cancel", response_model=JobRecord, operation_id="cancelJob",
             summary="Request cooperative cancellation (idempotent)", responses=responses(401, 404, 503))
def cancel_job(job_id: JobId, repo: RepoDep, service: ServiceDep, caller: CallerDep) -> JobRecord:
    _job_or_404(repo, job_id, caller.scope)
    # A running job stops at its next progress callback; one whose worker is gone is finished by the
    # reconciler once the leases of its units have expired (CDP_LEASE_TTL_S). An experiment's children are
    # canceled with it.
    return service.cancel(job_id, owner=caller.scope)


@router.get("/{job_id:jobid}/metrics", response_model=JobMetrics, operation_id="getJobMetrics",
            summary="Metrics of a finished job", responses=responses(401, 404, 409, 503))
def get_job_metrics(job_id: JobId, repo: RepoDep, store: StoreDep, caller: CallerDep) -> JobMetrics:
    job = _job_or_404(repo, job_id, caller.scope)
    try:
        metrics = store.get_json(keys.metrics_key(job_id))
    except ObjectNotFound:
        raise ProblemError(409, "Metrics not available", f"job {job_id} is {job.status}; metrics appear "
                           "when it succeeds", slug="metrics-not-available") from None
    field, model = TYPED_METRICS[job.kind]
    try:
        typed = {field: model.model_validate(metrics)}
    except ValidationError:  # metrics of an older layout: served untyped only
        typed = {}
    return JobMetrics(job_id=job_id, kind=job.kind, metrics=metrics, **typed)


# Per kind: the field of JobMetrics that holds its metrics typed, and their model.
TYPED_METRICS: dict[JobKind, tuple[str, type[BaseModel]]] = {
    "generate": ("generation", GenerationMetrics), "train": ("training", TrainingMetrics),
    "evaluate": ("evaluation", EvaluationMetrics), "experiment": ("experiment", ExperimentResult)}
for_every_kind(TYPED_METRICS, "TYPED_METRICS")


def _artifact_url(request: Request, store: ObjectStore, job_id: str, name: str, *, expires: int) -> str:
    url = store.presigned_url(keys.job_prefix(job_id) + name, expires=expires)
    return url or str(request.url_for("download_job_artifact", job_id=job_id, name=name))


@router.get("/{job_id:jobid}/artifacts", response_model=ArtifactList, operation_id="listJobArtifacts",
            summary="Files a job produced, with sizes, sha256 and download URLs",
            responses=responses(401, 404, 503))
def list_job_artifacts(job_id: JobId, request: Request, repo: RepoDep, store: StoreDep,
                       caller: CallerDep, settings: SettingsDep) -> ArtifactList:
    _job_or_404(repo, job_id, caller.scope)
    prefix = keys.job_prefix(job_id)
    try:
        manifest = store.get_json(keys.manifest_key(job_id))
        entries = [(a["name"], a["size"], a["sha256"]) for a in manifest["artifacts"]] + [
            ("manifest.json", store.stat(keys.manifest_key(job_id)).size, None)]
        complete = True
    except ObjectNotFound:
        entries = [(i.key[len(prefix):], i.size, i.sha256) for i in store.list(prefix)
                   if i.key != keys.record_key(job_id)]
        complete = False
    items = [Artifact(name=n, size=s, sha256=h,
                      url=_artifact_url(request, store, job_id, n, expires=settings.presign_expiry_s))
             for n, s, h in entries]
    return ArtifactList(job_id=job_id, complete=complete, items=items)


@router.get("/{job_id:jobid}/artifacts/{name:path}", operation_id="downloadJobArtifact",
            summary="Download one artifact (streamed): JSON, PNG and HTML files as such, anything else as "
                    "application/octet-stream", responses={
                200: {"content": artifact_content(), "description": "the file"},
                **responses(401, 404, 503)})
def download_job_artifact(job_id: JobId, name: str, repo: RepoDep, store: StoreDep,
                          caller: CallerDep) -> StreamingResponse:
    _job_or_404(repo, job_id, caller.scope)
    key = keys.job_prefix(job_id) + name
    try:
        info = store.stat(key)
        chunks = store.iter_chunks(key)
    except (ObjectNotFound, ValueError):
        raise ProblemError(404, "Not found", f"job {job_id} has no artifact {name!r}",
                           slug="artifact-not-found") from None
    filename = name.rsplit("/", 1)[-1]
    return StreamingResponse(chunks, media_type=artifact_media_type(name),
                             headers={"Content-Length": str(info.size),
                                      "Content-Disposition": f'attachment; filename="{filename}"'})


async def _follow_job(job_id: JobId, repo: RepoDep, caller: CallerDep, settings: SettingsDep,
                      poll_s: PollSeconds = 0.5) -> Follow[JobRecord]:
    return await follow(partial(job_view, repo, job_id, caller.scope, settings.shard_size), poll_s)


@router.get("/{job_id:jobid}/events", operation_id="streamJobEvents", response_class=EventSourceResponse,
            summary="Server-sent events: `state` on status changes, `progress` while running (an "
                    "experiment's over its children's units, with `child` when a child's status or stage "
                    "changes); ends when the job is finished",
            responses={200: EVENT_STREAM_RESPONSE, **responses(401, 404, 422, 503)})
async def stream_job_events(job: Annotated[Follow[JobRecord], Depends(_follow_job)], repo: RepoDep,
                            settings: SettingsDep) -> AsyncIterator[ServerSentEvent]:
    # the current state first; then progress changes, each state change after the progress that led to it;
    # the stream ends with the terminal state
    children = ChildEvents(repo, settings.shard_size)
    last_status, last_progress = None, None
    if not job.first.terminal:
        yield ServerSentEvent(event="state", data=job.first.model_dump(mode="json"))
        last_status = job.first.status
    async for record in job.records():
        progress = record.progress.model_dump(mode="json")
        if progress != last_progress:
            yield ServerSentEvent(event="progress",
                                  data={"id": record.id, "status": record.status, **progress})
            last_progress = progress
        if record.kind == "experiment":
            for child in await anyio.to_thread.run_sync(children.changes, record):
                yield ServerSentEvent(event="child", data=child)
        if record.status != last_status:
            yield ServerSentEvent(event="state", data=record.model_dump(mode="json"))
            last_status = record.status
