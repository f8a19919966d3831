"""Quotas per team, kept in Redis: job slots in use at once, images per UTC day, epochs per UTC day.

Each is a reservation that is taken in one atomic Redis step and given back when it does not fit (or when
the submission fails later), so concurrent submissions of a team never overshoot, across API processes,
without a lock:

- concurrent jobs: the hash ``cdp:quota:<team>:slots`` of job id -> slots. A job takes one slot; an
  experiment takes 1 + arms x seeds (its coordinating step and at most one live child per (arm, seed)), so
  one experiment cannot hold more of the cluster than the quota admits, and its children are not counted
  again. A submission adds its job and sums the hash; :meth:`core.jobs.records.JobRepository.update`
  removes a job when it becomes terminal. Before refusing, the ids in the hash are checked against their
  records, so an id whose removal was lost (Redis unreachable at that moment) never blocks a team for good.
- images and epochs per day: counters ``cdp:quota:<team>:<what>:<YYYYMMDD>`` (INCRBY, kept two days),
  charged when a job is accepted. A job that fails through no fault of the caller (a unit whose worker was
  lost, or whose dependencies failed, on every attempt) gets them back on the day it was charged
  (:func:`refund`; the record says ``refunded: true``); a job that fails on its own input, or that the
  caller cancels, does not.

A Redis that lost its data forgets the reservations (the quotas then count afresh): they are limits that
protect the service from a runaway client, not accounting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.jobs.errors import QuotaExceeded

DAY_S = 24 * 3600


def _team_key(team: str) -> str:
    return hashlib.sha256(team.encode()).hexdigest()[:32]


def live_key(team: str) -> str:
    return f"cdp:quota:{_team_key(team)}:slots"


def day_key(team: str, what: str, day: str) -> str:
    return f"cdp:quota:{_team_key(team)}:{what}:{day}"


REFUND_NOTE = ("a job that fails through no fault of yours (a dependency outage, a worker lost on every "
               "attempt) gives its images and epochs back")


@dataclass(frozen=True)
class Charges:
    """What a job counts against its team's quotas: job slots while it is unfinished, images and epochs on
    the day it is accepted."""

    slots: int = 1
    images: int = 0
    epochs: int = 0


def charges_of(kind: str, spec: dict[str, Any], *, parent: str | None = None) -> Charges:
    """The charges of a job from its kind and spec (the JSON body, as the record keeps it). An experiment's
    child is charged nothing: its experiment was, by its planned children."""
    if parent is not None:
        return Charges(slots=0)
    if kind == "generate":
        return Charges(images=int(spec["count"]))
    if kind == "train":
        return Charges(epochs=int(spec["epochs"]))
    if kind == "experiment":
        runs = len(spec["arms"]) * len(spec["seeds"])
        return Charges(slots=1 + runs, epochs=int(spec["trades"]["epochs"]) * runs)
    return Charges()


@dataclass(frozen=True)
class Reservation:
    team: str
    job_id: str
    charges: tuple[tuple[str, int], ...]  # (counter key, amount)


@dataclass
class Quotas:
    redis: Any
    concurrent_jobs: int
    images_per_day: int
    epochs_per_day: int
    # retry hint for a full concurrent-jobs quota (a job slot frees when some job finishes)
    concurrent_retry_after_s: int = 30
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def reserve(self, team: str, job_id: str, *, images: int = 0, epochs: int = 0, slots: int = 1,
                is_live: Callable[[str], bool]) -> Reservation:
        """Take ``slots`` job slots and the day's images and epochs for ``job_id``, or raise QuotaExceeded
        having taken nothing. ``is_live(job_id)`` tells whether a job holding slots is still unfinished."""
        self._take_slot(team, job_id, slots, is_live)
        charges: list[tuple[str, int]] = []
        try:
            day = self.now().strftime("%Y%m%d")
            for what, amount, limit in (("images", images, self.images_per_day),
                                        ("epochs", epochs, self.epochs_per_day)):
                if amount <= 0:
                    continue
                key = day_key(team, what, day)
                total = int(self.redis.incrby(key, amount))
                charges.append((key, amount))
                self.redis.expire(key, 2 * DAY_S)
                if total > limit:
                    used = total - amount
                    raise QuotaExceeded(
                        f"{what}_per_day", f"team {team!r} may use {limit} {what} per UTC day; {used} are "
                        f"used today and this job needs {amount}; {REFUND_NOTE}",
                        retry_after_s=self._until_midnight())
        except BaseException:
            self._give_back(team, job_id, charges)
            raise
        return Reservation(team, job_id, tuple(charges))

    def release(self, reservation: Reservation) -> None:
        """Undo a reservation whose job was not created after all."""
        self._give_back(reservation.team, reservation.job_id, list(reservation.charges))

    def live(self, team: str) -> int:
        """The job slots the team's unfinished jobs hold."""
        return _slots_in_use(self.redis, live_key(team))

    def _take_slot(self, team: str, job_id: str, slots: int, is_live: Callable[[str], bool]) -> None:
        key = live_key(team)
        self.redis.hset(key, job_id, slots)
        if _slots_in_use(self.redis, key) <= self.concurrent_jobs:
            return
        # Over: drop ids of jobs that are finished (or gone) and count again.
        stale = [member for member in self.redis.hkeys(key) if member != job_id and not is_live(member)]
        if stale:
            self.redis.hdel(key, *stale)
        used = _slots_in_use(self.redis, key)
        if used <= self.concurrent_jobs:
            return
        self.redis.hdel(key, job_id)
        what = "this experiment needs" if slots > 1 else "this job needs"
        raise QuotaExceeded(
            "concurrent_jobs", f"team {team!r} may have {self.concurrent_jobs} unfinished jobs at once (an "
            f"experiment counts as 1 + arms x seeds); {used - slots} are in use and {what} {slots}; wait "
            "until one finishes or cancel one", retry_after_s=self.concurrent_retry_after_s)

    def _give_back(self, team: str, job_id: str, charges: list[tuple[str, int]]) -> None:
        for key, amount in charges:
            self.redis.decrby(key, amount)
        self.redis.hdel(live_key(team), job_id)

    def _until_midnight(self) -> int:
        now = self.now()
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return max(1, int((midnight - now).total_seconds()) + 1)


def _slots_in_use(redis: Any, key: str) -> int:
    return sum(int(v) for v in redis.hvals(key))


def job_finished(redis: Any, team: str, job_id: str) -> None:
    """Free the job's slots (called when its record becomes terminal)."""
    redis.hdel(live_key(team), job_id)


def refund(redis: Any, record: Any) -> dict[str, int]:
    """Give a failed job's daily charges back to its team, on the UTC day they were charged (a counter
    already expired is left alone, and none goes below zero); returns what was given back."""
    charges = charges_of(record.kind, record.input, parent=record.parent)
    day = record.created_at.astimezone(UTC).strftime("%Y%m%d")
    given: dict[str, int] = {}
    for what, amount in (("images", charges.images), ("epochs", charges.epochs)):
        key = day_key(record.owner, what, day)
        if amount <= 0 or not redis.exists(key):
            continue
        left = int(redis.decrby(key, amount))
        if left < 0:
            redis.incrby(key, -left)
            amount += left
        given[what] = amount
    return given
