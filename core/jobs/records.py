"""The job record: durable in the object store (``jobs/<id>/job.json``, the source of truth), mirrored in
Redis for fast reads and live progress.

State changes (queued -> running -> succeeded | failed | canceled) are written to the store first and then
to Redis, under a short Redis lock because several shard tasks of one job may update it at once. Progress
updates only touch Redis; they are folded into the record when it is read. Everything needed to rebuild
Redis lives in the store: the record (with its frozen plan and per-unit attempt counts), the marker
``active/<id>`` of every non-terminal job, and the Idempotency-Key bindings. Reads fall back to the store
when Redis is unreachable. No torch here: the API uses it.

This module is the Redis layer's front: every Redis key of a job is read and written here or in the modules it
composes (:mod:`core.jobs.leases` as ``repo.leases``, :mod:`core.jobs.idempotency` as ``repo.idempotency``,
:mod:`core.jobs.dependants` as ``repo.dependants``, :mod:`core.jobs.quotas`); the rest of the service goes
through :class:`JobRepository` (tests/service/test_redis_layer.py checks it). At about 370 lines it stays one
module: the record's life cycle (create, read, list, update under the lock, finish, cancel, progress,
attempts) is one concern, and the lock protocol it shares would be scattered by a further split.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import redis as redis_lib

from core.jobs import keys, quotas
from core.jobs.dependants import Dependants
from core.jobs.dependencies import REDIS_ERRORS
from core.jobs.errors import DependencyUnavailable, JobNotFound
from core.jobs.idempotency import IdempotencyKeys
from core.jobs.keys import RECORD_TTL_S
from core.jobs.leases import UnitLeases
from core.progress import Stage
from core.specs import TERMINAL_STATUSES, JobKind, JobPlan, JobRecord, JobStatus, Progress, links_for
from core.storage import ObjectNotFound, ObjectStore, StorageError

log = logging.getLogger(__name__)

# A record update holds its lock for one small read and write (milliseconds; a slow S3 round trip at most);
# a waiter waits longer than the lock lives, so a holder killed mid-update delays the next update, never
# fails it.
UPDATE_LOCK_TTL_S = 10
UPDATE_LOCK_WAIT_S = 20


def json_bytes(data: Any) -> bytes:
    """How records and the other small JSON objects of this module are stored."""
    return json.dumps(data, indent=1).encode()


def put_json(store: ObjectStore, key: str, data: Any) -> None:
    store.put_bytes(key, json_bytes(data), content_type="application/json")


def get_json(store: ObjectStore, key: str) -> Any:
    return json.loads(store.get_bytes(key))


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s/'\"():,]+/)*([^\s/'\"():,]+)")


def public_error(error: str | None) -> str | None:
    """A job's error as clients see it: absolute server paths shortened to their last part
    (``GTSRB split folder missing: /srv/data/gtsrb/train`` -> ``... missing: .../train``), at most 2000
    characters. The worker logs the full text."""
    if error is None:
        return None
    text = _ABSOLUTE_PATH.sub(lambda m: ".../" + m.group(1), error)
    return text if len(text) <= 2000 else text[:1997] + "..."


def new_job_id() -> str:
    """24 hex digits: 12 of milliseconds since the epoch (so ids sort by creation time) and 12 random."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobRepository:
    """Reads and writes job records. ``redis`` is a ``redis.Redis`` client with ``decode_responses=True``."""

    def __init__(self, store: ObjectStore, redis: Any, *, lease_ttl_s: float = 30.0) -> None:
        self.store = store
        self.redis = redis
        self.leases = UnitLeases(redis, ttl_s=lease_ttl_s)
        self.idempotency = IdempotencyKeys(store, redis, job_visible=self._is_visible,
                                           job_stored=self._is_stored)
        self.dependants = Dependants(store, redis)  # who waits for whom (core.jobs.waiting)
        # called with a record that just became terminal (core.jobs.waiting.attach: settle its dependants)
        self.on_terminal: Callable[[JobRecord], None] | None = None

    # --- create / read ---
    def create(self, *, kind: JobKind, owner: str, input: dict[str, Any], job_id: str | None = None,
               plan: JobPlan | None = None, parent: str | None = None,
               waiting_for: Sequence[str] = ()) -> JobRecord:
        job_id = job_id or new_job_id()
        record = JobRecord(id=job_id, kind=kind, owner=owner, input=input, created_at=utcnow(),
                           links=links_for(job_id), plan=plan or JobPlan(), parent=parent,
                           status="waiting" if waiting_for else "queued", waiting_for=list(waiting_for))
        if waiting_for:
            record.progress.stage = Stage.WAITING
        # The record, then its markers, each durable before it becomes visible and visible after the one
        # before it; put_many lets the store flush all three in one round.
        self.store.put_many([
            (keys.record_key(job_id), json_bytes(record.model_dump(mode="json")), "application/json"),
            (keys.active_key(job_id), b"", "text/plain"),
            (keys.owner_index_prefix(owner) + job_id, b"", "text/plain"),
        ])
        self._mirror(record)
        return record

    def discard(self, job_id: str, owner: str) -> None:
        """Undo a submission that could not be enqueued (best effort: what cannot be deleted now is left for
        the reconciler, which then runs the job)."""
        index = keys.owner_index_prefix(owner) + job_id
        for key in (index, keys.record_key(job_id), keys.active_key(job_id)):
            try:
                self.store.delete(key)
            except StorageError as exc:
                log.warning("could not remove %s of an unsubmitted job: %s", key, exc)
        try:
            self.redis.delete(keys.redis_record(job_id))
        except REDIS_ERRORS:
            pass

    def load(self, job_id: str) -> JobRecord:
        """The record as stored (no Redis involved); JobNotFound if there is none."""
        try:
            return JobRecord.model_validate(get_json(self.store, keys.record_key(job_id)))
        except ObjectNotFound:
            raise JobNotFound(job_id) from None

    def get(self, job_id: str, *, owner: str | None = None) -> JobRecord:
        """The record with its live progress; JobNotFound if missing or owned by someone else. Served from
        the store alone (without live progress) while Redis is unreachable."""
        try:
            raw = self.redis.get(keys.redis_record(job_id))
        except REDIS_ERRORS:
            record = self.load(job_id)
            return self._visible(record, owner)
        if raw is not None:
            record = JobRecord.model_validate_json(raw)
        else:
            record = self.load(job_id)
            try:
                self.redis.set(keys.redis_record(job_id), record.model_dump_json(), ex=RECORD_TTL_S)
            except REDIS_ERRORS:
                pass
        record = self._visible(record, owner)
        if not record.terminal:
            try:
                live = self.redis.get(keys.redis_progress(job_id))
            except REDIS_ERRORS:
                live = None
            if live is not None:
                record.progress = Progress.model_validate_json(live)
        return record

    @staticmethod
    def _visible(record: JobRecord, owner: str | None) -> JobRecord:
        if owner is not None and record.owner != owner:
            raise JobNotFound(record.id)
        return record

    def list(
        self, *, owner: str | None, kind: JobKind | None = None, status: JobStatus | None = None,
        page_size: int = 50, page_token: str | None = None, parent: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """An owner's jobs (every owner's for ``owner=None``), newest first. ``page_token`` is the last id of
        the previous page."""
        prefix = keys.owner_index_prefix(owner) if owner is not None else keys.INDEX_PREFIX
        ids = sorted((info.key.rsplit("/", 1)[-1] for info in self.store.list(prefix)), reverse=True)
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
            if ((kind is None or record.kind == kind) and (status is None or record.status == status)
                    and (parent is None or record.parent == parent)):
                page.append(record)
                if len(page) == page_size:
                    break
        more = last_seen is not None and last_seen != ids[-1]
        return page, (last_seen if more and len(page) == page_size else None)

    def active_ids(self) -> Iterator[str]:
        """Ids of the jobs not known to be terminal (from the store's ``active/`` markers)."""
        for info in self.store.list(keys.ACTIVE_PREFIX):
            yield info.key[len(keys.ACTIVE_PREFIX):]

    def deactivate(self, job_id: str) -> None:
        self.store.delete(keys.active_key(job_id))

    # --- updates ---
    def update(self, job_id: str, change: Callable[[JobRecord], None]) -> JobRecord:
        """Apply ``change`` to the stored record under a lock and write it back (store, then Redis).

        The lock expires after UPDATE_LOCK_TTL_S (an update is one small read and write) and a caller waits
        longer than that, so a lock left behind by a killed process never fails the next update; if it still
        cannot be had (a hung holder), the update is a DependencyUnavailable (a 503 with Retry-After), not a
        crash."""
        lock = self.redis.lock(keys.redis_lock(job_id), timeout=UPDATE_LOCK_TTL_S,
                               blocking_timeout=UPDATE_LOCK_WAIT_S)
        try:
            acquired = lock.acquire()
        except redis_lib.exceptions.LockError:
            acquired = False
        if not acquired:
            raise DependencyUnavailable("redis", f"the record of job {job_id} is locked by another update; "
                                        "retry shortly")
        try:
            try:
                record = self.load(job_id)
            except JobNotFound:  # it was there when the caller read it: the store is failing
                raise DependencyUnavailable(
                    "storage", f"the record of job {job_id} cannot be read back from the store") from None
            was_terminal = record.terminal
            change(record)
            put_json(self.store, keys.record_key(job_id), record.model_dump(mode="json"))
            self._mirror(record)
        finally:
            with contextlib.suppress(redis_lib.exceptions.LockError, *REDIS_ERRORS):
                lock.release()  # an expired lock (a very slow store) is simply gone
        if record.terminal:
            try:
                self.deactivate(job_id)
            except StorageError as exc:  # the reconciler removes it later
                log.warning("job %s: could not remove its active marker: %s", job_id, exc)
            if not was_terminal:
                try:  # its team's concurrent-jobs slots (core.jobs.quotas); a lost removal heals itself
                    quotas.job_finished(self.redis, record.owner, job_id)
                    if record.refunded:
                        quotas.refund(self.redis, record)
                except REDIS_ERRORS:
                    pass
                if self.on_terminal is not None:
                    try:
                        self.on_terminal(record)
                    except Exception as exc:  # the reconciler settles the dependants at its next pass
                        log.warning("job %s: its terminal hook failed: %s", job_id, exc)
        return record

    def mark_running(self, job_id: str) -> JobRecord:
        def change(record: JobRecord) -> None:
            if record.status == "queued":
                record.status = "running"
                record.started_at = utcnow()

        return self.update(job_id, change)

    def finish(self, job_id: str, status: JobStatus, *, error: str | None = None,
               warnings: list[str] | None = None, refund: bool = False) -> JobRecord:
        """Move to a terminal state (once: a terminal record is never changed again), with the result's
        ``warnings`` (e.g. a generated set's sample-quality warnings) shown on the record. ``refund``: a
        failure that is not the caller's fault gives the job's daily quota charges back."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status={status!r} is not terminal")

        def change(record: JobRecord) -> None:
            if record.terminal:
                return
            record.status = status
            record.error = public_error(error)
            record.completed_at = utcnow()
            if warnings:
                record.warnings = list(warnings)
            record.refunded = refund and status == "failed"
            live = self.redis.get(keys.redis_progress(job_id))
            if live is not None:
                record.progress = Progress.model_validate_json(live)
            if status == "succeeded":
                record.progress.fraction = 1.0
                record.progress.current = record.progress.total
                record.progress.stage = Stage.DONE
            elif status == "canceled":
                record.progress.stage = Stage.CANCELED

        return self.update(job_id, change)

    def request_cancel(self, job_id: str) -> JobRecord:
        """Cooperative cancel: set the flag the worker's progress callable checks. A queued job is canceled
        at once (its tasks see the flag and do nothing); a terminal job is left as it is."""
        self.redis.set(keys.redis_cancel(job_id), "1", ex=RECORD_TTL_S)

        def change(record: JobRecord) -> None:
            if record.terminal:
                return
            record.cancel_requested = True
            if record.status in ("queued", "waiting"):
                record.status = "canceled"
                record.completed_at = utcnow()
                record.progress.stage = Stage.CANCELED

        return self.update(job_id, change)

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.exists(keys.redis_cancel(job_id)) > 0

    def set_progress(self, job_id: str, progress: Progress) -> None:
        self.redis.set(keys.redis_progress(job_id), progress.model_dump_json(), ex=RECORD_TTL_S)

    def count_attempt(self, job_id: str, unit: str) -> int:
        """One more start of ``unit``, counted in the stored record (so a Redis that lost its data does not
        reset it); returns the new count."""
        counted: list[int] = []

        def change(record: JobRecord) -> None:
            record.attempts[unit] = record.attempts.get(unit, 0) + 1
            record.attempt = max(record.attempt, record.attempts[unit])
            counted.append(record.attempts[unit])

        self.update(job_id, change)
        return counted[0]

    def note_shard_done(self, job_id: str, shard: int) -> None:
        self.redis.hset(keys.redis_shards(job_id), str(shard), "1")
        self.redis.expire(keys.redis_shards(job_id), RECORD_TTL_S)

    def shards_done(self, job_id: str) -> int:
        return int(self.redis.hlen(keys.redis_shards(job_id)))

    def note_unit_error(self, job_id: str, unit: str, error: str) -> None:
        """Remember why a unit gave up (a dependency failed), so the attempt cap can name the cause."""
        try:
            self.redis.hset(keys.redis_last_error(job_id), unit, error[:500])
            self.redis.expire(keys.redis_last_error(job_id), RECORD_TTL_S)
        except REDIS_ERRORS:
            pass

    def unit_error(self, job_id: str, unit: str) -> str | None:
        try:
            return self.redis.hget(keys.redis_last_error(job_id), unit)
        except REDIS_ERRORS:
            return None

    def restore_mirror(self, record: JobRecord) -> bool:
        """Rebuild what Redis should hold for a non-terminal job after it lost its data (the record mirror
        and the cancel flag). Returns True when something was missing."""
        missing = not self.redis.exists(keys.redis_record(record.id))
        if missing:
            self._mirror(record)
        if record.cancel_requested and not self.cancel_requested(record.id):
            self.redis.set(keys.redis_cancel(record.id), "1", ex=RECORD_TTL_S)
            missing = True
        return missing

    def ping(self) -> None:
        """DependencyUnavailable unless Redis answers (the client's error is its ``__cause__``)."""
        try:
            self.redis.ping()
        except REDIS_ERRORS as exc:
            raise DependencyUnavailable("redis", f"Redis does not answer ({type(exc).__name__})") from exc

    # --- the queue and the reconciler ---
    def queue_depth(self, lists: Sequence[str]) -> int:
        """Messages waiting in the broker's Redis lists ``lists`` (a queue's priority steps)."""
        return sum(int(self.redis.llen(name)) for name in lists)

    def reconcile_lock(self, timeout_s: float) -> Any:
        """The lock that keeps reconciler passes one at a time (``acquire(blocking=False)``, ``release()``);
        it expires after ``timeout_s`` should its holder die."""
        return self.redis.lock(keys.REDIS_RECONCILE_LOCK, timeout=timeout_s, blocking_timeout=0)

    # --- internals ---
    def _is_visible(self, job_id: str, owner: str) -> bool:
        try:
            self.get(job_id, owner=owner)
            return True
        except JobNotFound:
            return False

    def _is_stored(self, job_id: str) -> bool:
        try:
            self.load(job_id)
            return True
        except JobNotFound:
            return False

    def _mirror(self, record: JobRecord) -> None:
        self.redis.set(keys.redis_record(record.id), record.model_dump_json(), ex=RECORD_TTL_S)
