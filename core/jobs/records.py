"""The job record: durable in the object store (``jobs/<id>/job.json``, the source of truth), mirrored in
Redis for fast reads and live progress.

State changes (queued -> running -> succeeded | failed | canceled) are written to the store first and then
to Redis, under a short Redis lock because several shard tasks of one job may update it at once. Progress
updates only touch Redis; they are folded into the record when it is read. No torch here: the API uses it.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from core.jobs import keys
from core.specs import TERMINAL_STATUSES, JobKind, JobRecord, JobStatus, Progress, links_for
from core.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

RECORD_TTL_S = 7 * 24 * 3600  # the Redis mirror expires; the store keeps the record


def put_json(store: ObjectStore, key: str, data: Any) -> None:
    store.put_bytes(key, json.dumps(data, indent=1).encode(), content_type="application/json")


def get_json(store: ObjectStore, key: str) -> Any:
    return json.loads(store.get_bytes(key))


def new_job_id() -> str:
    """24 hex digits: 12 of milliseconds since the epoch (so ids sort by creation time) and 12 random."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobNotFound(KeyError):
    """No job with this id (or not visible to this owner)."""


class JobRepository:
    """Reads and writes job records. ``redis`` is a ``redis.Redis`` client with ``decode_responses=True``."""

    def __init__(self, store: ObjectStore, redis: Any) -> None:
        self.store = store
        self.redis = redis

    # --- create / read ---
    def create(
        self, *, kind: JobKind, owner: str, input: dict[str, Any], job_id: str | None = None
    ) -> JobRecord:
        job_id = job_id or new_job_id()
        record = JobRecord(id=job_id, kind=kind, owner=owner, input=input, created_at=utcnow(),
                           links=links_for(job_id))
        self._write(record)
        self.store.put_bytes(keys.owner_index_prefix(owner) + job_id, b"", content_type="text/plain")
        return record

    def get(self, job_id: str, *, owner: str | None = None) -> JobRecord:
        """The record with its live progress; JobNotFound if missing or owned by someone else."""
        raw = self.redis.get(keys.r_record(job_id))
        if raw is not None:
            record = JobRecord.model_validate_json(raw)
        else:
            try:
                record = JobRecord.model_validate(get_json(self.store, keys.record_key(job_id)))
            except ObjectNotFound:
                raise JobNotFound(job_id) from None
            self.redis.set(keys.r_record(job_id), record.model_dump_json(), ex=RECORD_TTL_S)
        if owner is not None and record.owner != owner:
            raise JobNotFound(job_id)
        if not record.terminal:
            live = self.redis.get(keys.r_progress(job_id))
            if live is not None:
                record.progress = Progress.model_validate_json(live)
        return record

    def list(
        self, *, owner: str, kind: JobKind | None = None, status: JobStatus | None = None,
        page_size: int = 50, page_token: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """An owner's jobs, newest first. ``page_token`` is the last id of the previous page."""
        prefix = keys.owner_index_prefix(owner)
        ids = sorted((info.key[len(prefix):] for info in self.store.list(prefix)), reverse=True)
        if page_token is not None:
            ids = [i for i in ids if i < page_token]
        page: list[JobRecord] = []
        last_seen: str | None = None
        for job_id in ids:
            last_seen = job_id
            try:
                record = self.get(job_id, owner=owner)
            except JobNotFound:
                continue
            if (kind is None or record.kind == kind) and (status is None or record.status == status):
                page.append(record)
                if len(page) == page_size:
                    break
        more = last_seen is not None and last_seen != ids[-1]
        return page, (last_seen if more and len(page) == page_size else None)

    # --- updates ---
    def update(self, job_id: str, change: Callable[[JobRecord], None]) -> JobRecord:
        """Apply ``change`` to the stored record under a lock and write it back (store, then Redis)."""
        with self.redis.lock(keys.r_lock(job_id), timeout=30, blocking_timeout=30):
            record = JobRecord.model_validate(get_json(self.store, keys.record_key(job_id)))
            change(record)
            self._write(record)
            return record

    def mark_running(self, job_id: str) -> JobRecord:
        def change(record: JobRecord) -> None:
            if record.status == "queued":
                record.status = "running"
                record.started_at = utcnow()

        return self.update(job_id, change)

    def finish(self, job_id: str, status: JobStatus, *, error: str | None = None) -> JobRecord:
        """Move to a terminal state (once: a terminal record is never changed again)."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status={status!r} is not terminal")

        def change(record: JobRecord) -> None:
            if record.terminal:
                return
            record.status = status
            record.error = error
            record.completed_at = utcnow()
            live = self.redis.get(keys.r_progress(job_id))
            if live is not None:
                record.progress = Progress.model_validate_json(live)
            if status == "succeeded":
                record.progress.fraction = 1.0
                record.progress.current = record.progress.total
                record.progress.stage = "done"
            elif status == "canceled":
                record.progress.stage = "canceled"

        return self.update(job_id, change)

    def request_cancel(self, job_id: str) -> JobRecord:
        """Cooperative cancel: set the flag the worker's progress callable checks. A queued job is canceled
        at once (its tasks see the flag and do nothing); a terminal job is left as it is."""
        self.redis.set(keys.r_cancel(job_id), "1", ex=RECORD_TTL_S)

        def change(record: JobRecord) -> None:
            if record.terminal:
                return
            record.cancel_requested = True
            if record.status == "queued":
                record.status = "canceled"
                record.completed_at = utcnow()
                record.progress.stage = "canceled"

        return self.update(job_id, change)

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.exists(keys.r_cancel(job_id)) > 0

    def set_progress(self, job_id: str, progress: Progress) -> None:
        self.redis.set(keys.r_progress(job_id), progress.model_dump_json(), ex=RECORD_TTL_S)

    def bump_attempt(self, job_id: str, unit: str) -> int:
        """Count deliveries of one unit of work (a shard, the finalize step, a training run); returns the
        new count and records the largest in the job's ``attempt`` field."""
        attempt = int(self.redis.hincrby(keys.r_attempts(job_id), unit, 1))
        self.redis.expire(keys.r_attempts(job_id), RECORD_TTL_S)

        def change(record: JobRecord) -> None:
            record.attempt = max(record.attempt, attempt)

        self.update(job_id, change)
        return attempt

    # --- idempotency keys (REFERENCE §6: same key + same body -> same job; kept >= 24 h) ---
    def idempotent_lookup(self, owner: str, key: str, body_hash: str) -> str | None:
        """The job id stored under this key, None if the key is new; ValueError if the body differs."""
        raw = self.redis.get(keys.r_idempotency(owner, key))
        if raw is None:
            return None
        entry = json.loads(raw)
        if entry["body"] != body_hash:
            raise ValueError(f"Idempotency-Key {key!r} was already used with a different request body")
        return str(entry["job_id"])

    def idempotent_claim(self, owner: str, key: str, body_hash: str, job_id: str) -> str:
        """Store key -> job id unless another request got there first; returns the winning job id."""
        entry = json.dumps({"job_id": job_id, "body": body_hash})
        if self.redis.set(keys.r_idempotency(owner, key), entry, nx=True, ex=48 * 3600):
            return job_id
        winner = self.idempotent_lookup(owner, key, body_hash)
        return winner if winner is not None else job_id

    # --- internals ---
    def _write(self, record: JobRecord) -> None:
        data = record.model_dump(mode="json")
        put_json(self.store, keys.record_key(record.id), data)
        self.redis.set(keys.r_record(record.id), json.dumps(data), ex=RECORD_TTL_S)

    def iter_ids(self, owner: str) -> Iterator[str]:
        prefix = keys.owner_index_prefix(owner)
        for info in self.store.list(prefix):
            yield info.key[len(prefix):]
