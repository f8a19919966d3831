"""Clients that wait: the long-poll of ``GET /jobs/{id}?wait=S`` (and of a pipeline), and the job view
that shows an experiment's progress counted over its children's units (:mod:`core.jobs.composite`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

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
