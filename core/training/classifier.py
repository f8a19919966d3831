"""Standard (non-robust) classifier training with cross-entropy: the pseudo-labeler and feature extractor of
the guidance (paper §2.1 and §3.2), and the non-robust baseline for the TRADES comparison.

The model with the best validation accuracy is saved as a classifier checkpoint in ``out_dir``
(``model.safetensors`` + ``config.json``); ``out_dir/checkpoint.pt`` holds the last epoch for resuming.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from core.data import ImageDataset, channel_stats
from core.data.images import to_unit
from core.models.classifiers import ARCHS, Arch, build_classifier
from core.models.io import save_classifier
from core.progress import ProgressFn, Stage, report
from core.training.common import batch_order, resolve_device, seed_everything
from core.training.distributed import (
    all_reduce_sum,
    is_main,
    local_rows,
    loss_scale,
    rank_device,
    unwrap,
    wrap_model,
)
from core.training.run import TrainingRun

logger = logging.getLogger(__name__)

# Fields a checkpoint must share with the config to be resumed (epochs too under the cosine schedule).
_RESUME_FIELDS = ("arch", "arch_options", "batch_size", "lr", "optimizer", "schedule", "normalize")


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Options of :func:`train_classifier`.

    ``schedule="cosine"`` anneals the learning rate to 0 over ``epochs`` (so it is part of what a resume must
    match). ``augment`` = random translation by up to ``crop_padding`` pixels (zero padding) and, with
    ``horizontal_flip``, mirror images. ``normalize="dataset"`` sets the model's input mean/std from the
    training images, ``"half"`` uses 0.5 / 0.5.
    """

    arch: Arch = "small_cnn"
    arch_options: dict[str, int] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = 0.0
    augment: bool = False
    crop_padding: int = 2
    horizontal_flip: bool = False
    normalize: Literal["dataset", "half"] = "dataset"
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown classifier arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.normalize not in ("dataset", "half"):
            raise ValueError(f"normalize must be 'dataset' or 'half', got {self.normalize!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0 or self.crop_padding < 0:
            raise ValueError("weight_decay and crop_padding must be >= 0")


def augment_batch(
    x: torch.Tensor, *, padding: int, horizontal_flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random translation by up to ``padding`` pixels (zero fill) and optional mirroring, drawn from
    ``generator`` on the CPU. x: N x C x H x W."""
    n, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).tolist()
        x = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
    if horizontal_flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    return x


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, dataset: ImageDataset, *, batch_size: int = 512, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Clean accuracy and mean cross-entropy of ``model`` (eval mode) on ``dataset``."""
    was_training = model.training
    model.eval()
    images = torch.from_numpy(dataset.images)
    labels = torch.from_numpy(dataset.labels)
    correct, loss_sum = 0, 0.0
    for start in range(0, len(dataset), batch_size):
        x = to_unit(images[start : start + batch_size], device)
        y = labels[start : start + batch_size].to(device)
        logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
    model.train(was_training)
    return {"accuracy": correct / len(dataset), "loss": loss_sum / len(dataset)}


def _make_optimizer(model: nn.Module, config: ClassifierTrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _make_scheduler(
    optimizer: torch.optim.Optimizer, config: ClassifierTrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing to 0 over ``total_steps`` optimiser steps, or a constant learning rate."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def train_classifier(
    train: ImageDataset,
    val: ImageDataset,
    *,
    config: ClassifierTrainConfig,
    out_dir: Path | str,
    seed: int,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train a classifier with cross-entropy; keep the epoch with the best validation accuracy.

    Writes ``out_dir/checkpoint.pt`` every epoch (model, optimizer, scheduler, RNG states, epoch) and resumes
    from it when present; the best model goes to ``out_dir`` as ``model.safetensors`` + ``config.json`` (load
    it with ``core.models.load_classifier``); ``metrics.json`` holds the per-epoch series. ``progress`` gets
    stage "train" per step and "epoch" per epoch and may raise ``core.progress.Cancelled``.

    Under ``torch.distributed`` (:mod:`core.training.distributed`) every rank draws the same global batches
    and augmentations and trains on its slice of the rows; rank 0 alone writes files and reports progress.
    """
    if train.info.num_classes != val.info.num_classes or train.info.image_size != val.info.image_size:
        raise ValueError(f"train ({train.info}) and val ({val.info}) datasets do not match")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = rank_device(resolve_device(device))
    generator = seed_everything(seed)
    model, net = _build_model(train, config, dev)  # DDP when distributed; optimiser and files see `net`
    optimizer = _make_optimizer(net, config)
    total_steps = math.ceil(len(train) / config.batch_size) * config.epochs
    scheduler = _make_scheduler(optimizer, config, total_steps)

    images = torch.from_numpy(train.images).to(dev)
    labels = torch.from_numpy(train.labels).to(dev)
    run = TrainingRun(
        "classifier", out=out, config=asdict(config), model=net, optimizer=optimizer, scheduler=scheduler,
        generators={"train": generator}, best={"epoch": 0, "val_accuracy": -1.0, "val_loss": float("inf")},
        resume_fields=_RESUME_FIELDS + (("epochs",) if config.schedule == "cosine" else ()),
    )
    run.resume(map_location=dev)

    metadata_base = {"dataset": train.info.to_dict(), "seed": seed, "train_config": asdict(config)}
    for epoch in range(run.epoch, config.epochs):
        began = time.perf_counter()
        loss_sum, correct, seen = _train_epoch(
            model, optimizer, scheduler, images, labels, config=config, epoch=epoch, run=run,
            total_steps=total_steps, generator=generator, device=dev, progress=progress,
        )
        run.elapsed += time.perf_counter() - began
        val_metrics = evaluate_accuracy(net, val, batch_size=config.eval_batch_size, device=dev)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_loss": val_metrics["loss"],
            "val_accuracy": val_metrics["accuracy"],
            "lr": optimizer.param_groups[0]["lr"],
        }
        if _is_best(record, run.best):
            run.best = {
                "epoch": epoch + 1,
                "val_accuracy": record["val_accuracy"],
                "val_loss": record["val_loss"],
            }
            if is_main():
                save_classifier(net, out, config={**metadata_base, "epoch": epoch + 1, "val": val_metrics})
        run.end_epoch(record, epochs=config.epochs, progress=progress)

    metrics = _final_metrics(run, net, train, config=config, seed=seed, out=out)
    run.write_metrics(metrics)
    return metrics


def _build_model(
    train: ImageDataset, config: ClassifierTrainConfig, device: torch.device
) -> tuple[nn.Module, nn.Module]:
    """The classifier on ``device``, its input normalised per ``config.normalize``: the model the steps run
    (DDP when distributed) and the module inside it."""
    info = train.info
    mean, std = channel_stats(train) if config.normalize == "dataset" else ([0.5] * info.channels,) * 2
    net = build_classifier(
        config.arch,
        num_classes=info.num_classes,
        channels=info.channels,
        image_size=info.image_size,
        mean=mean,
        std=std,
        **config.arch_options,
    ).to(device)
    model = wrap_model(net, device)
    return model, unwrap(model)


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: ClassifierTrainConfig,
    epoch: int,
    run: TrainingRun,
    total_steps: int,
    generator: torch.Generator,
    device: torch.device,
    progress: ProgressFn | None,
) -> tuple[float, int, int]:
    """One epoch of cross-entropy steps over a fresh order of the images (advancing ``run.step``); returns
    the summed loss, the correct predictions and the rows seen, all summed over the ranks."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for index in batch_order(len(labels), config.batch_size, generator=generator):
        index = index.to(device)
        x, y = to_unit(images[index]), labels[index]  # the global batch: every rank draws the same
        if config.augment:
            x = augment_batch(
                x,
                padding=config.crop_padding,
                horizontal_flip=config.horizontal_flip,
                generator=generator,
            )
        rows = local_rows(len(y))  # all rows on one process
        x, y, n_global = x[rows], y[rows], len(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        (loss * loss_scale(len(y), n_global)).backward()
        optimizer.step()
        scheduler.step()
        run.step += 1
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        step_loss = float(loss.detach())
        report(progress, Stage.TRAIN, run.step, total_steps, metrics={"step": run.step, "loss": step_loss},
               message=f"epoch {epoch + 1}/{config.epochs} loss {step_loss:.4f}")  # fmt: skip
    loss_sum, correct_sum, seen_sum = all_reduce_sum([loss_sum, float(correct), float(seen)])
    return loss_sum, int(correct_sum), int(seen_sum)


def _is_best(record: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Highest validation accuracy; ties (common on small validation sets) go to the lower loss."""
    assert best is not None
    return (record["val_accuracy"], -record["val_loss"]) > (best["val_accuracy"], -best["val_loss"])


def _final_metrics(run: TrainingRun, net: nn.Module, train: ImageDataset, *, config: ClassifierTrainConfig,
                   seed: int, out: Path) -> dict[str, Any]:
    history, best = run.history, run.best
    assert best is not None
    return {
        "kind": "classifier",
        "dataset": train.info.name,
        "seed": seed,
        "arch": config.arch,
        "epochs": config.epochs,
        "steps": run.step,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_seconds": round(run.elapsed, 2),
        "best_epoch": int(best["epoch"]),
        "best_val_accuracy": best["val_accuracy"],
        "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "final_train_accuracy": history[-1]["train_accuracy"] if history else None,
        "history": history,
        "config": asdict(config),
        "model_dir": str(out),
    }
