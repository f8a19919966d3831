"""Quotas per team, kept in Redis: jobs not yet finished at once, images per UTC day, epochs per UTC day.

Each is a reservation that is taken in one atomic Redis step and given back when it does not fit (or when
the submission fails later), so concurrent submissions of a team never overshoot, across API processes,
without a lock:

- concurrent jobs: the set ``cdp:quota:<team>:live`` of job ids. A submission adds its job id and counts
  the set; :meth:`core.jobs.records.JobRepository.update` removes a job when it becomes terminal. Before
  refusing, the ids in the set are checked against their records, so an id whose removal was lost (Redis
  unreachable at that moment) never blocks a team for good.
- images and epochs per day: counters ``cdp:quota:<team>:<what>:<YYYYMMDD>`` (INCRBY, kept two days),
  charged when a job is accepted and never refunded when it fails or is canceled later.

A Redis that lost its data forgets the reservations (the quotas then count afresh): they are limits that
protect the service from a runaway client, not accounting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

DAY_S = 24 * 3600


def _team_key(team: str) -> str:
    return hashlib.sha256(team.encode()).hexdigest()[:32]


def live_key(team: str) -> str:
    return f"cdp:quota:{_team_key(team)}:live"


def day_key(team: str, what: str, day: str) -> str:
    return f"cdp:quota:{_team_key(team)}:{what}:{day}"


class QuotaExceeded(Exception):
    """A team's quota does not admit this job; ``retry_after_s`` says when it may."""

    def __init__(self, quota: str, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.quota, self.message, self.retry_after_s = quota, message, retry_after_s


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

    def reserve(self, team: str, job_id: str, *, images: int = 0, epochs: int = 0,
                is_live: Callable[[str], bool]) -> Reservation:
        """Take a job slot and the day's images and epochs for ``job_id``, or raise QuotaExceeded having
        taken nothing. ``is_live(job_id)`` tells whether a job in the live set is still unfinished."""
        self._take_slot(team, job_id, is_live)
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
                        f"used today and this job needs {amount}", retry_after_s=self._until_midnight())
        except BaseException:
            self._give_back(team, job_id, charges)
            raise
        return Reservation(team, job_id, tuple(charges))

    def release(self, reservation: Reservation) -> None:
        """Undo a reservation whose job was not created after all."""
        self._give_back(reservation.team, reservation.job_id, list(reservation.charges))

    def live(self, team: str) -> int:
        return int(self.redis.scard(live_key(team)))

    def _take_slot(self, team: str, job_id: str, is_live: Callable[[str], bool]) -> None:
        key = live_key(team)
        self.redis.sadd(key, job_id)
        if int(self.redis.scard(key)) <= self.concurrent_jobs:
            return
        # Over: drop ids of jobs that are finished (or gone) and count again.
        stale = [member for member in self.redis.smembers(key) if member != job_id and not is_live(member)]
        if stale:
            self.redis.srem(key, *stale)
        if int(self.redis.scard(key)) <= self.concurrent_jobs:
            return
        self.redis.srem(key, job_id)
        raise QuotaExceeded(
            "concurrent_jobs", f"team {team!r} may have {self.concurrent_jobs} unfinished jobs at once; "
            "wait until one finishes or cancel one", retry_after_s=self.concurrent_retry_after_s)

    def _give_back(self, team: str, job_id: str, charges: list[tuple[str, int]]) -> None:
        for key, amount in charges:
            self.redis.decrby(key, amount)
        self.redis.srem(live_key(team), job_id)

    def _until_midnight(self) -> int:
        now = self.now()
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return max(1, int((midnight - now).total_seconds()) + 1)


def job_finished(redis: Any, team: str, job_id: str) -> None:
    """Free the job's slot (called when its record becomes terminal)."""
    redis.srem(live_key(team), job_id)
