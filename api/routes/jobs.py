"""The /jobs routes: thin handlers that delegate to :class:`core.jobs.service.JobService`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated, Any

import anyio
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.convertors import Convertor, register_url_convertor

from api import metrics as prom
from api.deps import CallerDep, RepoDep, ServiceDep, SettingsDep, StoreDep
from api.document import artifact_content, artifact_media_type
from api.problems import FieldError, ProblemError, responses
from api.waiting import ChildEvents, job_view, long_poll
from core.jobs import keys
from core.jobs.errors import (
    IdempotencyBusy,
    IdempotencyConflict,
    InvalidReference,
    JobNotFound,
    QuotaExceeded,
)
from core.jobs.records import JobRepository
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


class JobPage(BaseModel):
    items: list[JobRecord]
    next_page_token: str | None = Field(default=None, description="pass as page_token for the next page")


class Artifact(BaseModel):
    name: str = Field(examples=["shards/0.npz"])
    size: int
    sha256: str | None
    url: str = Field(description="presigned URL (MinIO) or this API's download route (local store)")


class ArtifactList(BaseModel):
    job_id: str
    complete: bool = Field(description="true once manifest.json exists (the job's outputs are final)")
    items: list[Artifact]


class Interval(BaseModel):
    mean: float | None
    std: float | None = None
    ci95: list[float] | None = Field(default=None, description="95 % Student-t interval of the mean")
    n: int
    seeds: list[int] = []
    values: list[float] = []


class EvaluationMetrics(BaseModel):
    """What an evaluation job measured (fractions in [0, 1]; worst: correct under every attack)."""

    count: int
    clean_acc: float
    worst_acc: float
    pgd_ce_acc: float | None = None
    pgd_cw_acc: float | None = None
    autoattack_acc: float | None = None
    eps: float
    steps: int
    attacks: list[str]
    seconds: float
    sanity: dict[str, str] = Field(description="check -> pass | fail (zero_gradients, randomness, "
                                   "probability_outputs, step_monotonicity)")
    warnings: list[str] = []


class ExperimentResult(BaseModel):
    """Per arm and metric: statistics over seeds; per non-reference arm: paired differences to the
    reference arm (same seeds)."""

    reference: str
    interval: str
    arms: dict[str, dict[str, Any]] = Field(description="arm -> metric -> mean, std, ci95, n, seeds, values "
                                            "(and synthetic_share)")
    paired: dict[str, dict[str, Interval | str]] = Field(description="arm -> metric -> paired difference")
    runs: list[dict[str, Any]]
    children: dict[str, dict[str, str]]


class GenerationMetrics(BaseModel):
    """What a generation job measured (see README: from the pseudo-labelling classifier, and independent
    of it); fields a job did not compute are null."""

    model_config = ConfigDict(extra="allow")
    generated: int | None = Field(default=None, description="images generated (before any selection)")
    class_histogram: list[int] | None = None
    mean_confidence: float | None = None
    mean_entropy: float | None = None
    separability_margin: float | None = None
    mean_feature_cosine: float | None = None
    label_agreement: float | None = Field(default=None, description="null without a judge")
    label_agreement_source: str | None = None
    outlier_fraction: float | None = None
    near_duplicates: int | None = None
    near_duplicate_fraction: float | None = None
    nn_distance_median: float | None = None
    class_entropy_normalized: float | None = None
    class_share_min: float | None = None
    class_share_max: float | None = None
    tstr_accuracy: float | None = Field(default=None, description="with `tstr: true`")
    sampling_seconds: float | None = None
    images_per_s: float | None = None
    warnings: list[str] = Field(default_factory=list, description="sample-quality warnings: outliers above "
                                "5 %, near-copies above 1 %, judge agreement below 90 %, a class under half "
                                "or over twice its balanced share; empty when none")


class TrainingMetrics(BaseModel):
    """What a training job measured: per-epoch history and, for classifier / trades with ``final_eval``, the
    clean and robust accuracy on the test split."""

    model_config = ConfigDict(extra="allow")
    history: list[dict[str, Any]] = Field(default_factory=list, description="one entry per epoch")
    test: dict[str, Any] | None = Field(default=None, description="clean_acc, robust_acc, ...")


class JobMetrics(BaseModel):
    job_id: str
    kind: JobKind
    metrics: dict[str, Any] = Field(
        examples=[{"count": 512, "class_histogram": [51, 52, 50, 49, 53, 50, 52, 51, 52, 52],
                   "mean_confidence": 0.93, "mean_entropy": 0.2, "separability_margin": 0.31,
                   "mean_feature_cosine": 0.12, "label_agreement": 0.91, "label_agreement_source": "judge",
                   "outlier_fraction": 0.01, "near_duplicate_fraction": 0.0, "nn_distance_median": 0.09,
                   "class_entropy_normalized": 0.998, "tstr_accuracy": 0.87, "images_per_s": 35.2}]
    )
    generation: GenerationMetrics | None = Field(default=None, description="generation jobs: typed metrics")
    training: TrainingMetrics | None = Field(default=None, description="training jobs: typed metrics")
    evaluation: EvaluationMetrics | None = Field(default=None, description="evaluation jobs: typed metrics")
    experiment: ExperimentResult | None = Field(default=None, description="experiment jobs: typed result")


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


async def _submit(kind: JobKind, call: Callable[[], tuple[JobRecord, bool]], response: Response) -> JobRecord:
    try:
        job, created = await anyio.to_thread.run_sync(call, limiter=submit_limiter())
    except (InvalidReference, IdempotencyConflict, IdempotencyBusy, QuotaExceeded) as exc:
        raise _submit_errors(exc) from None
    if created:
        prom.JOBS_SUBMITTED.labels(kind=kind).inc()
    return _created(response, job)


def _submit_errors(exc: Exception) -> ProblemError:
    if isinstance(exc, QuotaExceeded):
        return ProblemError(429, "Quota exceeded", exc.message, slug=f"quota-{exc.quota.replace('_', '-')}",
                            headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, IdempotencyBusy):
        return ProblemError(409, "Request in progress", str(exc), slug="idempotency-in-progress",
                            headers={"Retry-After": "1"})
    if isinstance(exc, InvalidReference):  # 404: absent; 409: not usable now; 422: a data set it lacks
        field = "body." + ".".join(str(p) for p in exc.loc)
        title = {404: "Reference not found", 409: "Reference not usable"}.get(exc.status, "Invalid reference")
        return ProblemError(exc.status, title, exc.message, slug=exc.slug,
                            errors=[FieldError(field=field, message=exc.message, type="invalid_reference")])
    return ProblemError(422, "Idempotency key reused", str(exc), slug="idempotency-conflict",
                        errors=[FieldError(field="header.Idempotency-Key", message=str(exc),
                                                type="idempotency_conflict")])


@router.post("/generate", status_code=202, response_model=JobRecord, operation_id="createGenerateJob",
             summary="Generate synthetic images with contrastive guidance",
             responses=SUBMIT_RESPONSES)
async def create_generate_job(spec: Annotated[GenerateSpec, Body()], service: ServiceDep,
        caller: CallerDep, response: Response, idempotency_key: IdempotencyKey = None) -> JobRecord:
    submit = partial(service.submit_generate, spec, owner=caller.team, idempotency_key=idempotency_key)
    return await _submit("generate", submit, response)


@router.post("/train", status_code=202, response_model=JobRecord, operation_id="createTrainJob",
             summary="Train a diffusion model, a classifier, or TRADES",
             responses=SUBMIT_RESPONSES)
async def create_train_job(spec: Annotated[TrainSpec, Body()], service: ServiceDep,
        caller: CallerDep, response: Response, idempotency_key: IdempotencyKey = None) -> JobRecord:
    submit = partial(service.submit_train, spec, owner=caller.team, idempotency_key=idempotency_key)
    return await _submit("train", submit, response)


@router.post("/evaluate", status_code=202, response_model=JobRecord, operation_id="createEvaluateJob",
             summary="Clean and adversarial accuracy (PGD-CE, PGD-CW, AutoAttack) of a finished model",
             responses=SUBMIT_RESPONSES)
async def create_evaluate_job(spec: Annotated[EvaluateSpec, Body()], service: ServiceDep,
        caller: CallerDep, response: Response, idempotency_key: IdempotencyKey = None) -> JobRecord:
    submit = partial(service.submit_evaluate, spec, owner=caller.team, idempotency_key=idempotency_key)
    return await _submit("evaluate", submit, response)


@router.post("/experiment", status_code=202, response_model=JobRecord, operation_id="createExperimentJob",
             summary="Compare arms (real only, + synthetic sets) over seeds: TRADES, evaluation, statistics",
             responses=SUBMIT_RESPONSES)
async def create_experiment_job(spec: Annotated[ExperimentSpec, Body()], service: ServiceDep,
        caller: CallerDep, response: Response, idempotency_key: IdempotencyKey = None) -> JobRecord:
    submit = partial(service.submit_experiment, spec, owner=caller.team, idempotency_key=idempotency_key)
    return await _submit("experiment", submit, response)


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
    field, model = _TYPED_METRICS[job.kind]
    try:
        typed = {field: model.model_validate(metrics)}
    except ValidationError:  # metrics of an older layout: served untyped only
        typed = {}
    return JobMetrics(job_id=job_id, kind=job.kind, metrics=metrics, **typed)


_TYPED_METRICS: dict[str, tuple[str, type[BaseModel]]] = {
    "generate": ("generation", GenerationMetrics), "train": ("training", TrainingMetrics),
    "evaluate": ("evaluation", EvaluationMetrics), "experiment": ("experiment", ExperimentResult)}


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


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


@router.get("/{job_id:jobid}/events", operation_id="streamJobEvents",
            summary="Server-sent events: `state` on status changes, `progress` while running (an "
                    "experiment's over its children's units, with `child` when a child's status or stage "
                    "changes); ends when the job is finished",
            responses={200: {"content": {"text/event-stream": {}}, "description": "event stream"},
                       **responses(401, 404, 422, 503)})
async def stream_job_events(job_id: JobId, repo: RepoDep, caller: CallerDep, settings: SettingsDep,
                            poll_s: Annotated[float, Query(ge=0.05, le=10)] = 0.5) -> StreamingResponse:
    read = partial(job_view, repo, job_id, caller.scope, settings.shard_size)
    first = await anyio.to_thread.run_sync(read)
    children = ChildEvents(repo, settings.shard_size)

    async def events(job: JobRecord) -> AsyncIterator[str]:
        # the current state first; then progress changes, each state change after the progress that led to it;
        # the stream ends with the terminal state
        last_status, last_progress = None, None
        if not job.terminal:
            yield _sse("state", job.model_dump(mode="json"))
            last_status = job.status
        idle = 0.0
        while True:
            progress = job.progress.model_dump(mode="json")
            if progress != last_progress:
                yield _sse("progress", {"id": job.id, "status": job.status, **progress})
                last_progress, idle = progress, 0.0
            if job.kind == "experiment":
                for child in await anyio.to_thread.run_sync(children.changes, job):
                    yield _sse("child", child)
            if job.status != last_status:
                yield _sse("state", job.model_dump(mode="json"))
                last_status = job.status
            if job.terminal:
                return
            await asyncio.sleep(poll_s)
            idle += poll_s
            if idle >= 15:
                yield ": keep-alive\n\n"
                idle = 0.0
            job = await anyio.to_thread.run_sync(read)

    return StreamingResponse(events(first), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
