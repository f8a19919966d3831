"""Progress reporting and cooperative cancellation, shared by trainers and samplers.

Core code never talks to Redis or Celery: long-running functions take a ``progress`` callable and call it
between units of work (diffusion steps, batches, epochs). The caller (the CLI's progress bar, a Celery task)
decides what to do with it; raising :class:`Cancelled` from the callable stops the work cleanly.
"""

from __future__ import annotations

from typing import Any, Protocol


class Cancelled(Exception):  # noqa: N818 - reads as a state, like asyncio.CancelledError
    """Raised by a progress callable to stop the work it is reporting on."""


class ProgressFn(Protocol):
    def __call__(
        self,
        *,
        stage: str,
        current: int,
        total: int,
        message: str = "",
        metrics: dict[str, Any] | None = None,
    ) -> None: ...


def null_progress(
    *, stage: str, current: int, total: int, message: str = "", metrics: dict[str, Any] | None = None
) -> None:
    """A progress callable that ignores everything."""
