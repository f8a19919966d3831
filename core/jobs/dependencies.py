"""The service's dependencies, Redis and the object store: the Redis client every process builds, and the
errors that mean "a dependency failed" as opposed to an error of a job itself (a unit that meets one gives up
its lease and is retried; the API answers 503). No torch here."""

from __future__ import annotations

import redis as redis_lib

from core.jobs.errors import DependencyUnavailable
from core.storage import ObjectNotFound, StorageError

# Errors of the service's dependencies (Redis, the object store), as opposed to errors of a job itself: a
# unit that meets one gives up its lease and is retried; the API answers 503.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis_lib.exceptions.ConnectionError,
                                                 redis_lib.exceptions.TimeoutError)


def is_dependency_error(exc: BaseException) -> bool:
    """Redis unreachable, or the store failing for a reason other than a missing object or a bad key."""
    from kombu.exceptions import OperationalError

    if isinstance(exc, (*REDIS_ERRORS, OperationalError, DependencyUnavailable)):
        return True
    return isinstance(exc, StorageError) and not isinstance(exc, (ObjectNotFound, ValueError))


def redis_client(url: str) -> redis_lib.Redis:
    """A client that fails fast: a short connect timeout and one quick retry, so an API whose Redis is down
    answers 503 (or reads from the store) at once instead of after redis-py's default backoff."""
    from redis.backoff import ConstantBackoff
    from redis.retry import Retry

    return redis_lib.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2, socket_timeout=10,
                                    retry=Retry(ConstantBackoff(0.05), 1), health_check_interval=15)
