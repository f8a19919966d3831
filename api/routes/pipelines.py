"""The /pipelines routes: a whole piece of work in one request (named steps that name earlier steps as
``step:<name>``), submitted as jobs with dependencies (:mod:`core.jobs.pipelines`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Depends, Path, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.deps import CallerDep, RepoDep, ServiceDep, SettingsDep
from api.problems import ProblemError, responses
from api.routes.jobs import SUBMIT_ERROR_TYPES, SUBMIT_RESPONSES, IdempotencyKey, WaitSeconds, submit_problem
from api.waiting import EVENT_STREAM_RESPONSE, Follow, PollSeconds, follow, long_poll
from core.jobs.errors import JobNotFound
from core.jobs.pipelines import cancel_pipeline, pipeline_view, submit_pipeline
from core.specs import JOB_ID_PATTERN
from core.specs.pipeline import PipelineRecord, PipelineSpec

router = APIRouter(prefix="/pipelines", tags=["pipelines"])
PipelineId = Annotated[str, Path(pattern=rf"^{JOB_ID_PATTERN}$", description="pipeline id (24 hex digits)")]


def _view(repo: Any, pipeline_id: str, owner: str | None, shard_size: int) -> PipelineRecord:
    try:
        return pipeline_view(repo, pipeline_id, owner, shard_size)
    except JobNotFound:
        raise ProblemError(404, "Not found", f"no pipeline {pipeline_id}",
                           slug="pipeline-not-found") from None


@router.post("", status_code=202, response_model=PipelineRecord, operation_id="createPipeline",
             summary="Submit named steps (train, generate, evaluate, experiment) as jobs with dependencies",
             responses=SUBMIT_RESPONSES)
async def create_pipeline(spec: Annotated[PipelineSpec, Body()], service: ServiceDep, caller: CallerDep,
                          settings: SettingsDep, response: Response,
                          idempotency_key: IdempotencyKey = None) -> PipelineRecord:
    def submit() -> PipelineRecord:
        document = submit_pipeline(service, spec, owner=caller.team, idempotency_key=idempotency_key)
        return pipeline_view(service.repo, document["id"], caller.team, settings.shard_size)

    try:
        record = await anyio.to_thread.run_sync(submit)
    except SUBMIT_ERROR_TYPES as exc:  # PipelineInvalid (steps that do not validate) among them
        raise submit_problem(exc) from None
    response.headers["Location"] = record.links["self"]
    return record


@router.get("/{pipeline_id:jobid}", response_model=PipelineRecord, operation_id="getPipeline",
            summary="A pipeline: its steps' jobs and states, progress over all of them",
            responses=responses(401, 404, 422, 503))
async def get_pipeline(pipeline_id: PipelineId, repo: RepoDep, caller: CallerDep, settings: SettingsDep,
                       wait: WaitSeconds = 0) -> PipelineRecord:
    read = partial(_view, repo, pipeline_id, caller.scope, settings.shard_size)
    return await long_poll(read, min(wait, settings.max_wait_seconds))


@router.post("/{pipeline_id:jobid}/cancel", response_model=PipelineRecord, operation_id="cancelPipeline",
             summary="Cancel every unfinished step (idempotent)", responses=responses(401, 404, 503))
async def cancel(pipeline_id: PipelineId, service: ServiceDep, caller: CallerDep,
                 settings: SettingsDep) -> PipelineRecord:
    def run() -> PipelineRecord:
        _view(service.repo, pipeline_id, caller.scope, settings.shard_size)  # 404 first
        cancel_pipeline(service, pipeline_id, owner=caller.scope)
        return _view(service.repo, pipeline_id, caller.scope, settings.shard_size)

    return await anyio.to_thread.run_sync(run)


async def _follow_pipeline(pipeline_id: PipelineId, repo: RepoDep, caller: CallerDep, settings: SettingsDep,
                           poll_s: PollSeconds = 0.5) -> Follow[PipelineRecord]:
    return await follow(partial(_view, repo, pipeline_id, caller.scope, settings.shard_size), poll_s)


@router.get("/{pipeline_id:jobid}/events", operation_id="streamPipelineEvents",
            response_class=EventSourceResponse,
            summary="Server-sent events: `step` when a step's status or stage changes, `progress` of the "
                    "whole; ends with `state` when every step is finished",
            responses={200: EVENT_STREAM_RESPONSE, **responses(401, 404, 422, 503)})
async def stream_pipeline_events(pipeline: Annotated[Follow[PipelineRecord], Depends(_follow_pipeline)]
                                 ) -> AsyncIterator[ServerSentEvent]:
    seen: dict[str, tuple[str, str]] = {}
    last_progress: dict[str, Any] | None = None
    async for record in pipeline.records():
        for step in record.steps:
            now = (step.status, str(step.progress.get("stage", "")))
            if seen.get(step.name) != now:
                seen[step.name] = now
                yield ServerSentEvent(event="step", data=step.model_dump(mode="json"))
        if record.progress != last_progress:
            last_progress = record.progress
            yield ServerSentEvent(event="progress", data={"id": record.id, "status": record.status,
                                                          **record.progress})
        if record.terminal:
            yield ServerSentEvent(event="state", data=record.model_dump(mode="json"))
