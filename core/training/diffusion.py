"""DDPM training with the epsilon objective (Ho et al. 2020, eq. 14 / Algorithm 1), AdamW, EMA of weights.

One step: x_0 from the data in [-1, 1], t ~ U{0, ..., T-1}, eps ~ N(0, I),
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, loss = || eps - eps_theta(x_t, t) ||^2 (mean).
The EMA weights are what gets saved as the diffusers pipeline (the usual choice for sampling).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from core.data import ImageDataset
from core.data.images import to_signed
from core.models.unet import UNET_PRESETS, UnetPreset, build_unet, make_scheduler, save_diffusion
from core.progress import ProgressFn, Stage, report
from core.training.common import EMA, batch_order, resolve_device, seed_everything
from core.training.distributed import (
    all_reduce_sum,
    is_main,
    local_rows,
    loss_scale,
    rank_device,
    wrap_model,
)
from core.training.run import TrainingRun

logger = logging.getLogger(__name__)

# Fields that fix the network or the objective: a checkpoint made with other values cannot be resumed.
_RESUME_FIELDS = ("preset", "class_conditional", "num_train_timesteps", "batch_size", "lr", "weight_decay")


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """Options of :func:`train_diffusion`. ``lr`` warms up linearly over ``warmup_steps`` then stays
    constant."""

    preset: UnetPreset = "tiny"
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    num_train_timesteps: int = 1000
    class_conditional: bool = False
    horizontal_flip: bool = False
    eval_batch: int = 256
    # Stop after the epoch in which the training time (summed over resumed runs) passes this many seconds.
    # None = all epochs. A time-limited run is not reproducible step for step (it depends on machine speed).
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        if self.preset not in UNET_PRESETS:
            raise ValueError(
                f"unknown UNet preset {self.preset!r}; expected one of {', '.join(UNET_PRESETS)}"
            )
        for name in ("epochs", "batch_size", "num_train_timesteps", "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay, warmup_steps and grad_clip must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be positive or None, got {self.time_limit_s}")


def diffusion_loss(
    unet: UNet2DModel,
    x0: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    class_labels: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    rows: slice | None = None,
) -> torch.Tensor:
    """Mean squared error between eps and eps_theta(x_t, t) (DDPM eq. 14), with t and eps drawn on the CPU
    from ``generator`` (so a run is reproducible on any device) unless ``timesteps`` are given.

    With ``rows``, t and eps are drawn for all of ``x0`` (the global batch) and the loss covers only those
    rows (one rank's share in data-parallel training)."""
    n = x0.shape[0]
    if timesteps is None:
        timesteps = torch.randint(0, alphas_cumprod.numel(), (n,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    if rows is not None:
        x0, noise, timesteps = x0[rows], noise[rows], timesteps[rows]
        class_labels = class_labels[rows] if class_labels is not None else None
        n = x0.shape[0]
    a_bar = alphas_cumprod[timesteps].to(x0.device, torch.float32).view(n, 1, 1, 1)
    x_t = a_bar.sqrt() * x0 + (1.0 - a_bar).sqrt() * noise
    eps = unet(x_t, timesteps.to(x0.device), class_labels=class_labels).sample
    return F.mse_loss(eps, noise)


@torch.no_grad()
def _eval_loss(
    unet: UNet2DModel,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    alphas_cumprod: torch.Tensor,
    seed: int,
) -> float:
    """The loss on a fixed batch with fixed t and eps (own generator: does not disturb the training
    stream)."""
    was_training = unet.training
    unet.eval()
    generator = torch.Generator().manual_seed(seed)
    timesteps = torch.linspace(0, alphas_cumprod.numel() - 1, x0.shape[0]).long()
    loss = diffusion_loss(
        unet, x0, alphas_cumprod=alphas_cumprod, generator=generator, class_labels=labels, timesteps=timesteps
    )
    unet.train(was_training)
    return float(loss)


def train_diffusion(
    train: ImageDataset,
    *,
    config: DiffusionTrainConfig,
    out_dir: Path | str,
    seed: int,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train a DDPM on ``train``; save a checkpoint every epoch and, at the end, the EMA model as a diffusers
    pipeline in ``out_dir`` (``model_index.json``, ``unet/``, ``scheduler/``) plus ``metrics.json``.

    Resumes from ``out_dir/checkpoint.pt`` when it exists (same result as an uninterrupted run with the same
    seed). ``progress`` gets stage "train" per optimisation step and "epoch" per epoch; it may raise
    ``core.progress.Cancelled`` (the last finished epoch's checkpoint stays). Returns the final metrics.

    Under ``torch.distributed`` (:mod:`core.training.distributed`) every rank draws t, eps and flips for the
    global batch and trains on its slice of the rows; rank 0 alone writes files and reports progress.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = rank_device(resolve_device(device))
    generator = seed_everything(seed)
    info = train.info
    num_classes = info.num_classes if config.class_conditional else None
    unet = build_unet(
        config.preset, image_size=info.image_size, channels=info.channels, num_classes=num_classes
    )
    unet.to(dev).train()
    model = wrap_model(unet, dev)  # DDP when distributed (GroupNorm only: no batch statistics to sync)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = EMA(unet, config.ema_decay, warmup=True)
    alphas_cumprod = torch.from_numpy(
        make_scheduler(config.num_train_timesteps).alphas_cumprod.numpy()
    ).double()

    images = torch.from_numpy(train.images).to(dev)  # N x H x W x C uint8, converted per batch
    labels = torch.from_numpy(train.labels).to(dev)
    held = _EvalBatch.of(images, labels, config=config, conditional=num_classes is not None,
                         alphas_cumprod=alphas_cumprod, seed=seed)  # fmt: skip
    total_steps = math.ceil(len(train) / config.batch_size) * config.epochs

    run = TrainingRun(
        "diffusion", out=out, config=asdict(config), resume_fields=_RESUME_FIELDS, model=unet,
        optimizer=optimizer, ema=ema, generators={"train": generator},
        extra={"initial_eval_loss": held.loss(unet)},
    )
    run.resume(map_location=dev)

    stopped_early = False
    for epoch in range(run.epoch, config.epochs):
        if _past_time_limit(config, run.elapsed):
            stopped_early = True
            logger.info("time limit %.0f s reached after %d epochs", config.time_limit_s, epoch)
            break
        began = time.perf_counter()
        losses = _train_epoch(
            model, unet, optimizer, ema, images, labels if num_classes is not None else None, config=config,
            epoch=epoch, run=run, total_steps=total_steps, alphas_cumprod=alphas_cumprod,
            generator=generator, device=dev, progress=progress,
        )
        record = {
            "epoch": epoch + 1,
            "train_loss": sum(losses) / len(losses),
            "eval_loss": held.loss(unet),
            "ema_eval_loss": held.loss(ema.module),
        }
        run.elapsed += time.perf_counter() - began  # training steps and the per-epoch evaluation
        run.end_epoch(record, epochs=config.epochs, progress=progress)  # rank 0 alone writes

    if not is_main():
        return {"kind": "diffusion", "rank_of_a_distributed_run": True}
    save_diffusion(ema.module, out, num_train_timesteps=config.num_train_timesteps)
    metrics = _final_metrics(run, unet, train, config=config, seed=seed, out=out, stopped_early=stopped_early)
    run.write_metrics(metrics)
    return metrics


@dataclass(frozen=True)
class _EvalBatch:
    """The fixed batch (the first ``config.eval_batch`` training images, with fixed t and eps) on which
    every epoch's evaluation loss is measured."""

    x0: torch.Tensor
    labels: torch.Tensor | None
    alphas_cumprod: torch.Tensor
    seed: int

    @classmethod
    def of(cls, images: torch.Tensor, labels: torch.Tensor, *, config: DiffusionTrainConfig,
           conditional: bool, alphas_cumprod: torch.Tensor, seed: int) -> _EvalBatch:
        index = torch.arange(min(config.eval_batch, len(images)))
        return cls(to_signed(images[index]), labels[index] if conditional else None, alphas_cumprod, seed)

    def loss(self, unet: UNet2DModel) -> float:
        return _eval_loss(unet, self.x0, self.labels, alphas_cumprod=self.alphas_cumprod, seed=self.seed)


def _past_time_limit(config: DiffusionTrainConfig, elapsed: float) -> bool:
    """Whether the training time has passed ``config.time_limit_s``; every rank takes the same decision (any
    rank past the limit stops them all)."""
    if config.time_limit_s is None:
        return False
    return bool(all_reduce_sum([float(elapsed >= config.time_limit_s)])[0])


def _train_epoch(
    model: torch.nn.Module,
    unet: UNet2DModel,
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    config: DiffusionTrainConfig,
    epoch: int,
    run: TrainingRun,
    total_steps: int,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    device: torch.device,
    progress: ProgressFn | None,
) -> list[float]:
    """One epoch of DDPM steps over a fresh order of the images (advancing ``run.step``); ``labels`` only for
    a class-conditional model. Returns every step's loss on the global batch (summed over the ranks)."""
    unet.train()
    losses: list[float] = []
    for index in batch_order(len(images), config.batch_size, generator=generator):
        x0 = to_signed(images[index.to(device)])
        if config.horizontal_flip:
            flip = (torch.rand(x0.shape[0], generator=generator) < 0.5).to(device)
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(3), x0)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (run.step + 1) / max(1, config.warmup_steps))
        rows = local_rows(x0.shape[0])  # all rows on one process
        loss = diffusion_loss(
            model,
            x0,
            alphas_cumprod=alphas_cumprod,
            generator=generator,
            class_labels=labels[index.to(device)] if labels is not None else None,
            rows=rows,
        )
        optimizer.zero_grad(set_to_none=True)
        (loss * loss_scale(rows.stop - rows.start, x0.shape[0])).backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        optimizer.step()
        ema.update(unet)
        run.step += 1
        losses.append(float(loss.detach()) * (rows.stop - rows.start) / x0.shape[0])
        step_loss = float(loss.detach())
        report(progress, Stage.TRAIN, run.step, total_steps, metrics={"step": run.step, "loss": step_loss},
               message=f"epoch {epoch + 1}/{config.epochs} loss {step_loss:.4f}")  # fmt: skip
    return all_reduce_sum(losses)  # each rank's share of every step's loss -> the global batch's loss


def _final_metrics(run: TrainingRun, unet: UNet2DModel, train: ImageDataset, *, config: DiffusionTrainConfig,
                   seed: int, out: Path, stopped_early: bool) -> dict[str, Any]:
    history = run.history
    return {
        "kind": "diffusion",
        "dataset": train.info.name,
        "seed": seed,
        "epochs": len(history),
        "stopped_early": stopped_early,
        "steps": run.step,
        "parameters": sum(p.numel() for p in unet.parameters()),
        "train_seconds": round(run.elapsed, 2),
        "initial_eval_loss": float(run.extra["initial_eval_loss"]),
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "final_eval_loss": history[-1]["eval_loss"] if history else None,
        "final_ema_eval_loss": history[-1]["ema_eval_loss"] if history else None,
        "history": history,
        "config": asdict(config),
        "pipeline_dir": str(out),
    }
