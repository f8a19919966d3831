"""Idempotency-Keys: the same key with the same body gives the same job; kept 48 h.

A claim is one atomic step in Redis (SET NX), mirrored durably in the store (create-if-absent), so concurrent
requests agree on one winner and a Redis that lost its data still knows old keys. Part of the Redis layer
(see tests/service/test_redis_layer.py); reached through ``JobRepository.idempotency``. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.jobs import keys
from core.jobs.dependencies import REDIS_ERRORS
from core.jobs.errors import IdempotencyBusy, IdempotencyConflict
from core.storage import ObjectStore, StorageError


@dataclass(frozen=True)
class Claim:
    job_id: str
    created: bool  # False: an earlier submission with this key owns the job


def body_digest(kind: str, body: dict[str, Any]) -> str:
    """What a key is bound to besides its job: the request's kind and body."""
    return hashlib.sha256(json.dumps([kind, body], sort_keys=True).encode()).hexdigest()


class IdempotencyKeys:
    """The key bindings of every owner. ``job_visible(job_id, owner)``: the owner can read that job's record
    (it exists); ``job_stored(job_id)``: the store holds its record."""

    def __init__(self, store: ObjectStore, redis: Any, *, job_visible: Callable[[str, str], bool],
                 job_stored: Callable[[str], bool]) -> None:
        self.store, self.redis = store, redis
        self.job_visible, self.job_stored = job_visible, job_stored

    def claim(self, owner: str, key: str, body_hash: str, job_id: str, *, wait_s: float = 10.0) -> Claim:
        """Bind ``key`` to ``job_id`` unless an earlier request holds it.

        A loser waits (up to ``wait_s``) until the winner's record exists, then returns it; a winner that
        failed releases its claim (:meth:`release`) and the next request may claim the key afresh."""
        rkey, skey = keys.redis_idempotency(owner, key), keys.idempotency_key(owner, key)
        entry = json.dumps({"job_id": job_id, "body": body_hash})
        deadline = time.monotonic() + wait_s
        while True:
            if self.redis.set(rkey, entry, nx=True, ex=keys.IDEMPOTENCY_TTL_S):
                return self._bind_durably(rkey, skey, owner, key, body_hash, job_id)
            raw = self.redis.get(rkey)
            if raw is not None:
                held = json.loads(raw)
                if held["body"] != body_hash:
                    raise IdempotencyConflict(
                        "Idempotency-Key was already used with a different request body")
                if self.job_visible(held["job_id"], owner):
                    return Claim(held["job_id"], created=False)
                # else the winner is still writing its record (or is about to release the key)
            if time.monotonic() > deadline:
                raise IdempotencyBusy("a request with this Idempotency-Key is still being processed")
            time.sleep(0.02)

    def _bind_durably(self, rkey: str, skey: str, owner: str, key: str, body_hash: str, job_id: str) -> Claim:
        binding = {"job_id": job_id, "body": body_hash, "created_at": datetime.now(UTC).isoformat()}
        try:
            if self.store.put_bytes_if_absent(skey, json.dumps(binding).encode(),
                                              content_type="application/json"):
                return Claim(job_id, created=True)
            earlier = self.store.get_json(skey)
            fresh = (datetime.now(UTC) - datetime.fromisoformat(earlier["created_at"])
                     < timedelta(seconds=keys.IDEMPOTENCY_TTL_S))
            if fresh and self.job_stored(earlier["job_id"]):
                if earlier["body"] != body_hash:
                    self.redis.delete(rkey)
                    raise IdempotencyConflict(
                        "Idempotency-Key was already used with a different request body")
                # Redis had forgotten the key (it lost its data): restore the binding there
                self.redis.set(rkey, json.dumps({"job_id": earlier["job_id"], "body": body_hash}),
                               ex=keys.IDEMPOTENCY_TTL_S)
                return Claim(earlier["job_id"], created=False)
            # expired, or bound to a job that was never created
            self.store.put_json(skey, binding)
            return Claim(job_id, created=True)
        except (StorageError, *REDIS_ERRORS):
            self.release(owner, key, job_id)
            raise

    def release(self, owner: str, key: str, job_id: str) -> None:
        """Free a key whose submission failed (best effort), so a retry can create the job."""
        rkey, skey = keys.redis_idempotency(owner, key), keys.idempotency_key(owner, key)
        try:
            binding = self.store.get_json(skey)
            if binding.get("job_id") == job_id:
                self.store.delete(skey)
        except (StorageError, ValueError):
            pass
        try:
            raw = self.redis.get(rkey)
            if raw is not None and json.loads(raw).get("job_id") == job_id:
                self.redis.delete(rkey)
        except REDIS_ERRORS:
            pass
