"""Who waits for whom (:mod:`core.jobs.waiting`), kept twice: durable empty markers
``dependants/<input id>/<job id>`` in the store, and a Redis set per input
(``cdp:job:<input id>:dependants``), a cache the reconciler rebuilds. Part of the Redis layer, composed by
:class:`core.jobs.records.JobRepository` as ``repo.dependants``. No torch here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from core.jobs.dependencies import REDIS_ERRORS
from core.jobs.keys import RECORD_TTL_S
from core.storage import ObjectStore, StorageError

PREFIX = "dependants/"


def marker_key(input_id: str, job_id: str) -> str:
    return f"{PREFIX}{input_id}/{job_id}"


def redis_dependants(input_id: str) -> str:
    return f"cdp:job:{input_id}:dependants"


class Dependants:
    def __init__(self, store: ObjectStore, redis: Any) -> None:
        self.store, self.redis = store, redis

    def add(self, job_id: str, inputs: Iterable[str]) -> None:
        """``job_id`` waits for each of ``inputs``: the store's markers first (they are the truth)."""
        inputs = list(inputs)
        self.store.put_many([(marker_key(i, job_id), b"", "text/plain") for i in inputs])
        self.cache(job_id, inputs)

    def cache(self, job_id: str, inputs: Iterable[str]) -> None:
        """The Redis side of :meth:`add` (rebuilt by the reconciler after Redis lost its data)."""
        try:
            for input_id in inputs:
                self.redis.sadd(redis_dependants(input_id), job_id)
                self.redis.expire(redis_dependants(input_id), RECORD_TTL_S)
        except REDIS_ERRORS:
            pass  # the store's markers and the reconciler still find it

    def of(self, input_id: str) -> set[str]:
        """The jobs that wait (or waited) for ``input_id``."""
        prefix = PREFIX + input_id + "/"
        found = {info.key[len(prefix):] for info in self.store.list(prefix)}
        try:
            found |= set(self.redis.smembers(redis_dependants(input_id)))
        except REDIS_ERRORS:
            pass
        return found

    def forget(self, input_id: str, job_id: str) -> None:
        """``input_id`` is terminal and ``job_id`` was settled: its marker is no longer needed."""
        try:
            self.store.delete(marker_key(input_id, job_id))
        except StorageError:
            pass
        try:
            self.redis.srem(redis_dependants(input_id), job_id)
        except REDIS_ERRORS:
            pass
