"""Jobs that wait for their inputs: a job naming ``job:<id>`` of an unfinished job is accepted as
``waiting`` (``waiting_for``: the ids of those inputs) and starts once every input has succeeded; it fails
at once, naming the input, when one fails or is canceled. No torch here: the API uses it.

Who depends on whom is kept by :mod:`core.jobs.dependants` (``repo.dependants``): durable markers in the
store and a Redis set per input, a cache the reconciler rebuilds. When a job
becomes terminal, :meth:`core.jobs.records.JobRepository.update` calls the hook :func:`attach` installed,
which settles every dependant (:func:`settle`): released (``queued``, its units enqueued), failed with the
cause, or left waiting for its other inputs. Settling reads the inputs' records from the store and changes
the dependant under its record lock, so two inputs finishing at once release it once. A dependant whose
hook never ran (a killed worker, a Redis flush) is settled by the reconciler, which visits every waiting
job (it has an ``active/`` marker like every unfinished job). Cycles cannot arise: only existing jobs can
be named, and a job's inputs are fixed at submission.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from core.jobs.errors import JobNotFound
from core.jobs.records import JobRepository, utcnow
from core.specs import JobRecord

log = logging.getLogger(__name__)

_JOB_REF = re.compile(r"job:([0-9a-f]{24})")


def input_refs(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``job:<id>`` in a job's input, as (field path, job id), e.g. ("arms.1.synthetic.0", id)."""
    if isinstance(value, str):
        match = _JOB_REF.fullmatch(value)
        if match:
            yield path, match.group(1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from input_refs(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from input_refs(item, f"{path}.{i}" if path else str(i))


def register(repo: JobRepository, record: JobRecord) -> None:
    """Record that ``record`` waits for each of its ``waiting_for``."""
    repo.dependants.add(record.id, record.waiting_for)


def restore(repo: JobRepository, record: JobRecord) -> None:
    """The Redis side of :func:`register`, after Redis lost its data."""
    repo.dependants.cache(record.id, record.waiting_for)


def dependants_of(repo: JobRepository, input_id: str) -> set[str]:
    return repo.dependants.of(input_id)


def settle(repo: JobRepository, enqueuer: Any, job_id: str, shard_size: int) -> str:
    """Look at a waiting job's inputs and act: "released" (all succeeded: queued, units enqueued), "failed"
    (an input failed, was canceled or is gone), "waiting" (some still unfinished), or "not-waiting"."""
    from core.jobs.reconcile import initial_units

    try:
        record = repo.load(job_id)
    except JobNotFound:
        return "not-waiting"
    if record.status != "waiting":
        return "not-waiting"
    unfinished: list[str] = []
    for field, input_id in input_refs(record.input):
        try:
            source = repo.load(input_id)
        except JobNotFound:
            return _fail(repo, job_id, f"its input {field} (job:{input_id}) no longer exists")
        if source.status in ("failed", "canceled"):
            why = f": {source.error}" if source.error else ""
            return _fail(repo, job_id, f"its input {field} (job:{input_id}) {source.status}{why}")
        if source.status != "succeeded":
            unfinished.append(input_id)
    if unfinished:
        if sorted(set(unfinished)) != sorted(set(record.waiting_for)):
            repo.update(job_id, lambda r: _still_waiting(r, unfinished))
        return "waiting"
    released: list[bool] = []

    def release(r: JobRecord) -> None:
        if r.status == "waiting":
            r.status, r.waiting_for = "queued", []
            r.progress.stage = ""
            released.append(True)

    record = repo.update(job_id, release)
    if released:  # only the caller that moved it to queued enqueues (a lost send: the reconciler's (a))
        from core.jobs.queue import job_priority

        enqueuer.units(job_id, initial_units(record, shard_size), priority=job_priority(record))
        log.info("job %s: its inputs succeeded; queued", job_id)
        return "released"
    return "not-waiting"


def _still_waiting(record: JobRecord, unfinished: list[str]) -> None:
    if record.status == "waiting":
        record.waiting_for = sorted(set(unfinished))


def _fail(repo: JobRepository, job_id: str, cause: str) -> str:
    def change(record: JobRecord) -> None:
        if record.status == "waiting":
            record.status, record.error = "failed", f"the job cannot run: {cause}"[:2000]
            record.completed_at = utcnow()

    repo.update(job_id, change)
    log.info("job %s: failed, %s", job_id, cause)
    return "failed"


def on_terminal(repo: JobRepository, enqueuer: Any, shard_size: int, record: JobRecord) -> None:
    """The hook of :func:`attach`: settle the dependants of a job that just became terminal."""
    for dependant in sorted(dependants_of(repo, record.id)):
        try:
            settle(repo, enqueuer, dependant, shard_size)
        except Exception as exc:  # the reconciler settles it at its next pass
            log.warning("job %s: could not settle its dependant %s: %s", record.id, dependant, exc)
            continue
        repo.dependants.forget(record.id, dependant)


def attach(repo: JobRepository, enqueuer: Any, shard_size: int) -> JobRepository:
    """Make ``repo`` settle the dependants of every job it moves to a terminal state."""
    repo.on_terminal = lambda record: on_terminal(repo, enqueuer, shard_size, record)
    return repo
