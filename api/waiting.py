"""Clients that wait: the long-poll of ``GET /jobs/{id}?wait=S`` (and of a pipeline), what the event streams
of a job and of a pipeline share (:class:`Follow`), and the job view that shows an experiment's progress
counted over its children's units (:mod:`core.jobs.composite`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import anyio
from fastapi import Query

from api.problems import ProblemError
from core.jobs.composite import child_states, experiment_parts, experiment_progress
from core.jobs.errors import JobNotFound
from core.jobs.records import JobRepository
from core.specs import JobRecord

T = TypeVar("T")
POLL_S = 0.5  # how often a waiting request re-reads the record (Redis first: cheap)


def job_view(repo: JobRepository, job_id: str, owner: str | None, shard_size: int) -> JobRecord:
    """The job as the API shows it (404 for a missing job or another team's); an unfinished experiment's
    progress counts its children's units, running ones by their live progress."""
    try:
        job = repo.get(job_id, owner=owner)
    except JobNotFound:
        raise ProblemError(404, "Not found", f"no job {job_id}", slug="job-not-found") from None
    if job.kind == "experiment" and job.status == "running":
        job.progress = experiment_progress(repo, job, shard_size)
    return job


def _finished(value: object) -> bool:
    return bool(getattr(value, "terminal", False))


async def long_poll(read: Callable[[], T], seconds: float, *,
                    done: Callable[[T], bool] = _finished,
                    sleep: Callable[[float], Awaitable[object]] = anyio.sleep) -> T:
    """``read()`` (run in a thread) until ``done`` of it or ``seconds`` have passed; the last value read."""
    deadline = time.monotonic() + seconds
    value = await anyio.to_thread.run_sync(read)
    while not done(value):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await sleep(min(POLL_S, left))
        value = await anyio.to_thread.run_sync(read)
    return value


# --- event streams (GET /jobs/{id}/events, GET /pipelines/{id}/events) ---
PollSeconds = Annotated[float, Query(ge=0.05, le=10)]
# The 200 of an event stream in the document: FastAPI's EventSourceResponse writes the events (``event:``
# and ``data:`` lines, the data as JSON) and a ``: ping`` comment after 15 s without one.
EVENT_STREAM_RESPONSE: dict[str, Any] = {"content": {"text/event-stream": {}}, "description": "event stream"}


@dataclass(frozen=True)
class Follow(Generic[T]):
    """What an event stream follows: ``first``, the record read before the stream starts (so a missing one
    is a 404, not a stream that breaks off), and ``read``, which reads it again every ``poll_s`` seconds."""

    first: T
    read: Callable[[], T]
    poll_s: float

    async def records(self) -> AsyncIterator[T]:
        """``first``, then a fresh read every ``poll_s`` seconds, up to and with the first finished one."""
        record = self.first
        while True:
            yield record
            if _finished(record):
                return
            await anyio.sleep(self.poll_s)
            record = await anyio.to_thread.run_sync(self.read)


async def follow(read: Callable[[], T], poll_s: float) -> Follow[T]:
    """A :class:`Follow` of ``read``, read once now (in a thread): a stream's dependency, so that its errors
    (404) are answered before the stream starts."""
    return Follow(await anyio.to_thread.run_sync(read), read, poll_s)


class ChildEvents:
    """The children of an experiment whose (status, stage) changed since the last call: what its events
    stream reports as ``child`` events."""

    def __init__(self, repo: JobRepository, shard_size: int) -> None:
        self.repo, self.shard_size = repo, shard_size
        self.seen: dict[str, tuple[object, object]] = {}

    def changes(self, job: JobRecord) -> list[dict[str, object]]:
        changed = []
        for state in child_states(self.repo, experiment_parts(job, self.shard_size)):
            key = (state["status"], state["stage"])
            if self.seen.get(str(state["id"])) != key:
                self.seen[str(state["id"])] = key
                changed.append({"parent": job.id, **state})
        return changed
