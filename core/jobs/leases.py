"""Leases on units of work: at most one executor per unit at any time, and a dead executor noticed in seconds.

A unit is one shard of a generation job (``shard-<k>``), its ``finalize`` step, or a training run
(``train``). Before doing any work a task acquires the unit's lease: a Redis key ``cdp:lease:<job>:<unit>``
with a time to live (``CDP_LEASE_TTL_S``) whose value is a fencing token, a number that grows with every
acquisition of that unit. While the unit runs, a heartbeat thread renews the lease every
``CDP_LEASE_RENEW_S``; a renewal succeeds only while the key still holds the executor's own token, so an
executor that was paused past its TTL (and replaced) learns that it lost the lease, and stops at its next
progress callback (:class:`LeaseLost`). The final writes of a unit check the token first
(:meth:`Lease.check`). When the worker dies the renewals stop, the key expires, and the reconciler
(:mod:`core.jobs.reconcile`) re-enqueues the unit. Expiry is decided by Redis alone (the key's time to live
runs on the Redis server); an executor measures only durations, on its monotonic clock, so a host whose wall
clock is off neither loses nor steals a lease (tests/service/test_netns_hosts.py runs one 30 s ahead).

Each unit also has a state in the hash ``cdp:job:<id>:units``: ``pending:<message id>`` once a message for it
was sent, ``taken:<message id>`` once an executor acquired its lease. The reconciler reads lease and state
together: a unit with neither a live lease nor a pending message is re-enqueued (its worker died, or Redis
lost the queue). Message ids tie the two, so a state written late (the executor took the unit before the
sender marked it pending) never hides a lost unit.

No torch here.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from core.jobs import keys
from core.jobs.errors import LeaseLost

log = logging.getLogger(__name__)


# KEYS: lease, fence hash, units hash. ARGV: unit, ttl ms, message id, holder.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[4], 'PX', ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], 'taken:' .. ARGV[3])
return token
"""
# KEYS: lease. ARGV: token, ttl ms.
_RENEW = """
local value = redis.call('GET', KEYS[1])
if value and string.match(value, '^%d+') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
return 0
"""
_RELEASE = """
local value = redis.call('GET', KEYS[1])
if value and string.match(value, '^%d+') == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""
# KEYS: units hash. ARGV: unit, message id, ttl s. A unit already taken by this very message stays taken;
# the hash's time to live is renewed either way (one round trip for both).
_MARK_PENDING = """
local marked = 0
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'taken:' .. ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], 'pending:' .. ARGV[2])
  marked = 1
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return marked
"""


@dataclass(frozen=True)
class UnitState:
    """What Redis knows of one unit: whether a lease is live, and its last state (None: nothing known)."""

    leased: bool
    state: str | None

    @property
    def pending(self) -> bool:
        return self.state is not None and self.state.startswith("pending:")

    @property
    def taken(self) -> bool:
        return self.state is not None and self.state.startswith("taken:")


class UnitLeases:
    """The leases and unit states of every job, on one Redis client (``decode_responses=True``)."""

    def __init__(self, redis: Any, *, ttl_s: float) -> None:
        self.redis = redis
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._mark = redis.register_script(_MARK_PENDING)

    def acquire(self, job_id: str, unit: str, *, message_id: str, holder: str) -> Lease | None:
        """The lease of ``unit``, or None when another executor holds it."""
        names = [keys.redis_lease(job_id, unit), keys.redis_fence(job_id), keys.redis_units(job_id)]
        token = int(self._acquire(keys=names, args=[unit, self.ttl_ms, message_id, holder]))
        if token == 0:
            return None
        return Lease(self, job_id, unit, token)

    def mark_pending(self, job_id: str, unit: str, message_id: str) -> None:
        self._mark(keys=[keys.redis_units(job_id)], args=[unit, message_id, keys.RECORD_TTL_S])

    def has_state(self, job_id: str, unit: str) -> bool:
        return bool(self.redis.hexists(keys.redis_units(job_id), unit))

    def states(self, job_id: str, units: list[str]) -> dict[str, UnitState]:
        """Lease and state of each unit, read in one transaction (MULTI/EXEC), so a unit that changes hands
        meanwhile is seen either before or after, never half."""
        if not units:
            return {}
        with self.redis.pipeline(transaction=True) as pipe:
            for unit in units:
                pipe.exists(keys.redis_lease(job_id, unit))
            pipe.hmget(keys.redis_units(job_id), units)
            replies = pipe.execute()
        states = replies[-1]
        return {unit: UnitState(leased=bool(replies[i]), state=states[i]) for i, unit in enumerate(units)}

    def holder(self, job_id: str, unit: str) -> str | None:
        value = self.redis.get(keys.redis_lease(job_id, unit))
        return None if value is None else value.partition(" ")[2]


class Lease:
    """One executor's hold on one unit. ``start_heartbeat`` renews it from a daemon thread until ``release``;
    ``check`` raises :class:`LeaseLost` once a renewal found someone else's token (or none)."""

    def __init__(self, leases: UnitLeases, job_id: str, unit: str, token: int) -> None:
        self.leases, self.job_id, self.unit, self.token = leases, job_id, unit, token
        self.key = keys.redis_lease(job_id, unit)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_renewed = time.monotonic()

    def renew(self) -> bool:
        ok = bool(int(self.leases._renew(keys=[self.key], args=[self.token, self.leases.ttl_ms])))
        if ok:
            self._last_renewed = time.monotonic()
        else:
            self.lost = True
        return ok

    def check(self) -> None:
        """Raise LeaseLost when this executor no longer holds the unit (checked against Redis when the last
        renewal is older than the TTL, e.g. because Redis was unreachable)."""
        if not self.lost and time.monotonic() - self._last_renewed > self.leases.ttl_ms / 1000:
            self.renew()
        if self.lost:
            raise LeaseLost(f"{self.unit} of job {self.job_id}: lease {self.token} was lost")

    def start_heartbeat(self, every_s: float, *, deadline: float | None = None) -> Lease:
        """Renew every ``every_s`` seconds until released; past ``deadline`` (time.monotonic()) the renewals
        stop, so a unit hung beyond its time limit loses its lease and is handed on by the reconciler."""

        def beat() -> None:
            while not self._stop.wait(every_s):
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("%s of job %s is past its time limit; no longer renewing its lease",
                                self.unit, self.job_id)
                    return
                try:
                    if not self.renew():
                        log.warning("%s of job %s: lease %d lost", self.unit, self.job_id, self.token)
                        return
                except Exception as exc:  # Redis unreachable: keep trying; check() decides after the TTL
                    log.warning("%s of job %s: lease renewal failed: %s", self.unit, self.job_id, exc)

        self._thread = threading.Thread(target=beat, name=f"lease-{self.job_id}-{self.unit}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (best effort: an unreachable Redis lets it
        expire instead)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            self.leases._release(keys=[self.key], args=[self.token])
        except Exception as exc:
            log.warning("%s of job %s: could not release lease (%s); it expires by itself",
                        self.unit, self.job_id, exc)
