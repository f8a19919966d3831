"""The errors of the job layer (``core.jobs``): one tree, one root, so a caller can catch "any error of the
job layer" (:class:`JobsError`) or exactly the one it handles. No imports beyond the standard library, so
every module of the layer (and the API above it) can import this one.

A class keeps a builtin base where callers catch it by that base (``except KeyError`` / ``LookupError`` /
``ValueError`` / ``RuntimeError``); that base is part of its contract::

    JobsError                         root of the job layer's errors
    ├── JobNotFound (KeyError)        no job or pipeline with this id, or not visible to this owner
    ├── EntryNotFound (LookupError)   no registered data set or model with this id (core.jobs.registry)
    ├── EntryInUse                    a registered entry that unfinished jobs still use cannot be deleted
    ├── StorageQuotaExceeded          an upload beyond the team's storage quota (CDP_QUOTA_STORAGE_BYTES)
    ├── InvalidReference (ValueError) a submission's job / model / data-set reference cannot be used
    ├── IdempotencyConflict (ValueError)
    │                                 an Idempotency-Key already used with a different request body
    ├── IdempotencyBusy (RuntimeError)
    │                                 a request with the same Idempotency-Key is still being processed
    ├── QuotaExceeded                 a team's job-slot, image or epoch quota does not admit this job
    ├── PipelineInvalid (ValueError)  steps of a pipeline that do not validate
    ├── DependencyUnavailable (RuntimeError)
    │                                 Redis or the object store cannot be reached (the API answers 503)
    ├── LeaseLost                     another executor holds this unit now (core.jobs.leases)
    └── DeadlineExceeded              a unit ran past CDP_TASK_TIME_LIMIT_S

Elsewhere: the object store's errors have their own root, :class:`core.storage.StorageError`; a job that
was canceled stops with :class:`core.progress.Cancelled` (raised by the science code, which knows nothing
of jobs); an upload that does not validate is a :class:`core.formats.uploads.UploadError`. The API turns
these into problem documents (:mod:`api.problems`; submissions: ``api.routes.jobs.SUBMIT_ERRORS``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DeadlineExceeded", "DependencyUnavailable", "EntryInUse", "EntryNotFound", "IdempotencyBusy",
    "IdempotencyConflict", "InvalidReference", "JobNotFound", "JobsError", "LeaseLost", "PipelineInvalid",
    "QuotaExceeded", "StorageQuotaExceeded",
]


class JobsError(Exception):
    """The root of the job layer's errors."""


# --- lookups ---
class JobNotFound(JobsError, KeyError):  # noqa: N818 - the name the layer has always used
    """No job with this id (or not visible to this owner)."""


class EntryNotFound(JobsError, LookupError):  # noqa: N818
    """No registered data set or model with this id (or not visible to this owner)."""


# --- the registry of uploads ---
class EntryInUse(JobsError):  # noqa: N818
    """A registered entry that unfinished jobs use; ``jobs`` lists them."""

    def __init__(self, ref: str, jobs: list[str]) -> None:
        self.jobs = jobs
        super().__init__(f"{ref} is used by unfinished jobs: {', '.join(jobs[:5])}"
                         + (" ..." if len(jobs) > 5 else ""))


class StorageQuotaExceeded(JobsError):  # noqa: N818
    """An upload that would take a team past its storage quota."""

    def __init__(self, owner: str, used: int, needed: int, quota: int) -> None:
        self.used, self.needed, self.quota = used, needed, quota
        super().__init__(f"team {owner!r} stores {used} bytes of its quota of {quota} "
                         f"(CDP_QUOTA_STORAGE_BYTES); this upload needs {needed} more")


# --- submissions ---
class InvalidReference(JobsError, ValueError):
    """A ``job:<id>`` or model-name reference that cannot be used; ``loc`` is the field path. ``status``: 404
    for something absent (no such job of the caller's, no such model), 409 for a job that exists but is not
    a finished job of the right kind, 422 for a data set the server lacks (not in the document's enum)."""

    def __init__(self, loc: tuple[str | int, ...], message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message
        self.status = status

    @property
    def slug(self) -> str:
        return {404: "reference-not-found", 409: "reference-not-usable"}.get(self.status, "invalid-reference")


class IdempotencyConflict(JobsError, ValueError):
    """The Idempotency-Key was already used with a different request body."""


class IdempotencyBusy(JobsError, RuntimeError):
    """Another request with the same Idempotency-Key is still being processed."""


class QuotaExceeded(JobsError):  # noqa: N818
    """A team's quota does not admit this job; ``retry_after_s`` says when it may."""

    def __init__(self, quota: str, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.quota, self.message, self.retry_after_s = quota, message, retry_after_s


class PipelineInvalid(JobsError, ValueError):  # noqa: N818
    """Steps that do not validate: ``errors`` in pydantic's shape (loc, msg, type), locs from ``steps``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in errors))
        self.errors = errors


# --- dependencies and execution ---
class DependencyUnavailable(JobsError, RuntimeError):
    """Redis or the object store cannot be reached; ``dependency`` names which ("redis" or "storage")."""

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(message)
        self.dependency = dependency


class LeaseLost(JobsError):  # noqa: N818 - reads as a state, like Cancelled
    """Another executor holds this unit now (this one was too slow to renew): stop without writing."""


class DeadlineExceeded(JobsError):  # noqa: N818
    """The unit ran past ``CDP_TASK_TIME_LIMIT_S``."""
