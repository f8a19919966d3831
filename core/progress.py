"""Progress reporting and cooperative cancellation, shared by trainers, samplers and simulations.

Core code never talks to Redis or Celery: long-running functions take a ``progress`` callable and hand it
one :class:`ProgressEvent` between units of work (diffusion steps, batches, epochs). The caller (the CLI's
progress bar, a worker's unit) decides what to do with it; raising :class:`Cancelled` from the callable
stops the work cleanly. The stage values are public: a job record's ``progress.stage`` shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class Cancelled(Exception):  # noqa: N818 - reads as a state, like asyncio.CancelledError
    """Raised by a progress callable to stop the work it is reporting on."""


class Stage(StrEnum):
    """What the work is doing; ``current`` of ``total`` counts the units named beside each member."""

    SAMPLING = "sampling"  # reverse-diffusion steps of a sampler (all batches of one generate call)
    LABELLING = "labelling"  # the classifier labelling the generated images (0 of 1, then 1 of 1)
    TRAIN = "train"  # optimisation steps of a trainer (all epochs)
    CHECKPOINT = "checkpoint"  # epochs whose resumable checkpoint is on disk in the trainer's out_dir
    EPOCH = "epoch"  # epochs finished; ``metrics`` holds the finished epoch's record
    EVALUATE = "evaluate"  # batches (or chunks) of a clean and adversarial evaluation
    SIMULATE = "simulate"  # samples drawn by a simulation study
    # Stages a job record shows that no core function reports:
    FINALIZING = "finalizing"  # a generation job's finalize unit: metrics, preview, manifest
    CHILDREN = "children"  # an experiment's child jobs finished so far
    WAITING = "waiting"  # a job waiting for its input jobs to succeed (core.jobs.waiting)
    DONE = "done"  # the job succeeded
    CANCELED = "canceled"  # the job was canceled


@dataclass(frozen=True)
class ProgressEvent:
    """``current`` of ``total`` units of ``stage`` are done; ``message`` is for people, ``metrics`` for
    programs (an epoch's record)."""

    stage: Stage
    current: int
    total: int
    message: str = ""
    metrics: Mapping[str, Any] | None = None

    @property
    def fraction(self) -> float:
        """``current / total`` within the stage, clipped to [0, 1] (0 for an empty stage)."""
        return min(1.0, max(0.0, self.current / self.total)) if self.total > 0 else 0.0


class ProgressFn(Protocol):
    def __call__(self, event: ProgressEvent, /) -> None: ...


def report(progress: ProgressFn | None, stage: Stage, current: int, total: int, *, message: str = "",
           metrics: Mapping[str, Any] | None = None) -> None:
    """Hand ``progress`` (if given) one event; it may raise :class:`Cancelled` to stop the caller."""
    if progress is not None:
        progress(ProgressEvent(stage, current, total, message=message, metrics=metrics))


def report_epoch(progress: ProgressFn | None, epoch: int, epochs: int, *,
                 metrics: Mapping[str, Any] | None = None) -> None:
    """A trainer finished ``epoch`` of ``epochs`` and its checkpoint is on disk: CHECKPOINT (a worker
    uploads it), then EPOCH with the epoch's metrics (where a cancel stops the run, the checkpoint kept)."""
    report(progress, Stage.CHECKPOINT, epoch, epochs)
    report(progress, Stage.EPOCH, epoch, epochs, metrics=metrics)
