"""The skeleton the three trainers share (classifier, diffusion, TRADES): a :class:`TrainingRun` holds what a
bit-identical resume needs and does the bookkeeping of every epoch's end; each trainer keeps its own science
(model, batches, loss, evaluation) and its own loop.

Checkpoint layout (``out_dir/checkpoint.pt``, written by rank 0 after every epoch, atomically):

======================  ===========================================================================
key                     value
======================  ===========================================================================
``kind``                the trainer ("classifier", "diffusion", "trades"); a resume must match it
``config``              the trainer's config as a dict; the ``resume_fields`` must match on resume
``epoch``, ``step``     finished epochs and optimiser steps
``model``               the (unwrapped) model's state dict
``optimizer``           the optimiser's state dict
``scheduler``, ``ema``  their state dicts, present only when the trainer has one
``rng``                 named generators and global RNGs (:func:`core.training.common.rng_state`)
``history``             one record per finished epoch
``best``                the trainer's best epoch so far, present only when it keeps one
``elapsed_s``           training seconds summed over resumed runs
(others)                ``extra`` values (restored on resume) and ``must_match`` values (checked)
======================  ===========================================================================

These are the keys the trainers wrote before this module existed, so their older checkpoints resume; a
TRADES checkpoint without EMA then held ``"ema": None``, which reads the same as an absent key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.progress import ProgressFn, report_epoch
from core.training.common import (
    CHECKPOINT_NAME,
    EMA,
    check_resumable,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from core.training.distributed import is_main

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"


@dataclass
class TrainingRun:
    """One trainer's resumable state: its parts (model, optimiser, scheduler, EMA, generators) and counters.

    ``label`` names the trainer in log lines (``kind`` when empty). ``best`` is the trainer's own record of
    its best epoch (None: it keeps none); ``extra`` holds further values a resume restores as they were
    saved (the diffusion trainer's loss before training); ``must_match`` values must equal the saved ones
    (the size of TRADES' synthetic set).
    """

    kind: str
    out: Path
    config: dict[str, Any]
    resume_fields: Sequence[str]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    ema: EMA | None = None
    label: str = ""
    best: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    must_match: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def _parts(self) -> dict[str, Any]:
        """The parts with a state dict, by checkpoint key (the scheduler and EMA only when present)."""
        parts: dict[str, Any] = {"model": self.model, "optimizer": self.optimizer}
        if self.scheduler is not None:
            parts["scheduler"] = self.scheduler
        if self.ema is not None:
            parts["ema"] = self.ema
        return parts

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint of the epochs finished so far (layout in the module docstring)."""
        state: dict[str, Any] = {"kind": self.kind, "config": self.config, **self.must_match,
                                 "epoch": self.epoch, "step": self.step}  # fmt: skip
        state.update({key: part.state_dict() for key, part in self._parts().items()})
        state["rng"] = rng_state(self.generators)
        state["history"] = self.history
        if self.best is not None:
            state["best"] = self.best
        state["elapsed_s"] = self.elapsed
        state.update(self.extra)
        return state

    def resume(self, *, map_location: str | torch.device = "cpu") -> bool:
        """Load ``out/checkpoint.pt`` when it exists (False when it does not); ValueError when it was made by
        another trainer, with other settings, or lacks a part this run has."""
        path = self.checkpoint_path
        if not path.exists():
            return False
        state = load_checkpoint(path, map_location=map_location)
        check_resumable(state, kind=self.kind, config=self.config, fields=self.resume_fields, path=path)
        for name, value in self.must_match.items():
            if state.get(name) != value:
                raise ValueError(f"{path} was made with {name}={state.get(name)!r}, not {value!r}")
        missing = [key for key in self._parts() if state.get(key) is None]
        kept = [*self.extra, *(["best"] if self.best is not None else [])]
        missing += [name for name in kept if name not in state]
        if missing:
            raise ValueError(f"{path} has no {' or '.join(missing)} state")
        for key, part in self._parts().items():
            part.load_state_dict(state[key])
        set_rng_state(state["rng"], self.generators)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history, self.elapsed = list(state["history"]), float(state["elapsed_s"])
        if self.best is not None:
            self.best = dict(state["best"])
        self.extra = {name: state[name] for name in self.extra}
        logger.info("resuming %s training from %s at epoch %d", self.label or self.kind, path, self.epoch)
        return True

    def end_epoch(self, record: dict[str, Any], *, epochs: int, progress: ProgressFn | None) -> None:
        """Append ``record`` (whose ``"epoch"`` is the 1-based epoch just finished) to the history; on rank 0
        also write the checkpoint, log the record and report the epoch (``report_epoch``: CHECKPOINT, then
        EPOCH, which may raise Cancelled)."""
        self.epoch = int(record["epoch"])
        self.history.append(record)
        if not is_main():
            return
        save_checkpoint(self.checkpoint_path, self.state_dict())
        logger.info("%s epoch %d/%d: %s", self.label or self.kind, self.epoch, epochs, record)
        report_epoch(progress, self.epoch, epochs, metrics=record)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """``out/metrics.json`` (rank 0 only)."""
        if is_main():
            (self.out / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
