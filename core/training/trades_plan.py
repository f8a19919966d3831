"""TRADES' options and the plan of a run: :class:`TradesConfig`, the learning-rate and eps schedules, the
optimiser with weight decay on weights only, the He initialisation, the real / synthetic indices of every
step of an epoch, and the batch of a step assembled from them (:func:`assemble_batch`). Nothing here trains:
the loss, its inner attack and the loop are in :mod:`core.training.trades`, whose docstring also describes
the two ways of mixing real and synthetic data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from core import options
from core.data.images import to_unit
from core.models.classifiers import ARCHS, Arch
from core.options import check_choice
from core.training.distributed import local_rows


@dataclass(frozen=True)
class TradesConfig:
    """Options of :func:`core.training.trades.train_trades` (defaults: the official TRADES attack and Gowal
    et al.'s optimiser).

    ``eps``, ``step_size``: L-inf radius and PGD step in [0, 1] pixel units; ``steps``: PGD steps of the
    training attack; ``start``: "normal" (x + 0.001 N(0, I), official) or "uniform" (in the ball).
    ``schedule``: "cosine" (from ``lr`` to 0 over all steps), "onecycle" (linear warm-up from lr/25 over
    ``warmup_fraction`` of the steps, then cosine to 0) or "constant". ``ema_decay`` 0 disables the EMA;
    ``ema_warmup`` ramps the decay as min(decay, (1+n)/(10+n)) so short runs are not dominated by the
    initialisation. ``init="kaiming"`` re-draws conv and linear weights from He et al.'s normal (fan-in, ReLU
    gain) with zero biases; PyTorch's default init leaves the SiLU SmallCNN on a loss plateau for hundreds of
    SGD steps (measured on digits), ``"default"`` keeps the architecture's own. ``eval_steps``/``eval_max``:
    PGD-CE steps and at most this many validation images for the per-epoch robust accuracy (step size
    2.5 eps / eval_steps), measured on the evaluated model (the EMA when enabled).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: options.TradesSchedule = options.TRADES_SCHEDULE
    warmup_fraction: float = 0.3
    beta: float = options.TRADES_BETA
    eps: float = options.EPS
    step_size: float = options.STEP_SIZE
    steps: int = options.ATTACK_STEPS
    start: options.AttackStart = options.ATTACK_START
    ema_decay: float = 0.995
    ema_warmup: bool = True
    label_smoothing: float = 0.0
    mixing: options.Mixing = options.MIXING
    synthetic_fraction: float = options.SYNTHETIC_FRACTION
    eta: float = options.MIXING_ETA
    arch: Arch = options.ARCH
    arch_options: dict[str, int] = field(default_factory=dict)
    init: Literal["kaiming", "default"] = "kaiming"
    eval_steps: int = 10
    eval_max: int = 1024
    eval_batch_size: int = 256
    steps_per_epoch: int | None = None  # None: ceil(n_real / batch_size); set it to fix the step budget
    eps_warmup: float = 0.0  # fraction of all steps over which eps and the attack step ramp up from 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown classifier arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        for name in ("epochs", "batch_size", "eval_max", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("steps", "eval_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "step_size"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("eps", "beta", "weight_decay", "momentum"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.steps_per_epoch is not None and (isinstance(self.steps_per_epoch, bool)
                                                 or not isinstance(self.steps_per_epoch, int)
                                                 or self.steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a positive int or None, got {self.steps_per_epoch!r}")
        if not (math.isfinite(self.eps_warmup) and 0.0 <= self.eps_warmup <= 1.0):
            raise ValueError(f"eps_warmup must be a fraction in [0, 1], got {self.eps_warmup!r}")
        if self.eps > 1:
            raise ValueError(f"eps is in [0, 1] pixel units (8/255 = {8 / 255:.4f}), got {self.eps!r}")
        check_choice("schedule", self.schedule, options.TRADES_SCHEDULES)
        check_choice("start", self.start, options.ATTACK_STARTS)
        check_choice("mixing", self.mixing, options.MIXINGS)
        if not 0.0 <= self.synthetic_fraction < 1.0:
            raise ValueError(f"synthetic_fraction must be in [0, 1), got {self.synthetic_fraction!r}")
        if not 0.0 < self.eta <= 1.0:
            raise ValueError(f"eta (weight of the real data in eq. 3) must be in (0, 1], got {self.eta!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.init not in ("kaiming", "default"):
            raise ValueError(f"init must be 'kaiming' or 'default', got {self.init!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")


# ------------------------------------------------------------------------------------------------ schedules


def learning_rate(step: int, total_steps: int, *, config: TradesConfig) -> float:
    """The learning rate at optimiser step ``step`` (0-based) of ``total_steps``."""
    if config.schedule == "constant":
        return config.lr
    warmup = int(config.warmup_fraction * total_steps) if config.schedule == "onecycle" else 0
    if step < warmup:
        return config.lr * (1 / 25 + (1 - 1 / 25) * step / warmup)
    progress = (step - warmup) / max(total_steps - warmup, 1)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress))


def kaiming_init(model: nn.Module) -> None:
    """He-normal (fan-in, ReLU gain) weights and zero biases for every conv and linear layer, in place."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def make_optimizer(model: nn.Module, config: TradesConfig) -> torch.optim.SGD:
    """SGD (Nesterov) with weight decay on weight matrices and kernels only, not on biases or norm scales."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


# ------------------------------------------------------------------------------------------------ batching


def steps_per_epoch(n_real: int, config: TradesConfig) -> int:
    """ceil(n_real / B), with or without synthetic data, unless ``config.steps_per_epoch`` fixes it (so
    arms with more or fewer real images train for the same number of steps)."""
    if config.steps_per_epoch is not None:
        return config.steps_per_epoch
    return math.ceil(n_real / config.batch_size)


def eps_scale(step: int, total_steps: int, config: TradesConfig) -> float:
    """The share of eps (and of the attack step) at ``step``: a linear ramp from 1 / (warm-up steps) to 1
    over the first ``eps_warmup`` of all steps, then 1 (1 throughout when ``eps_warmup`` is 0)."""
    warm = config.eps_warmup * total_steps
    return 1.0 if warm <= 0 else min(1.0, (step + 1) / warm)


def epoch_plan(
    n_real: int, n_synthetic: int, *, config: TradesConfig, generator: torch.Generator
) -> list[tuple[Tensor, Tensor | None]]:
    """(real indices, synthetic indices or None) for every step of one epoch, drawn from ``generator``."""
    steps = steps_per_epoch(n_real, config)
    batch = config.batch_size
    if n_synthetic == 0 and config.steps_per_epoch is None:
        order = torch.randperm(n_real, generator=generator)
        return [(order[i * batch : (i + 1) * batch], None) for i in range(steps)]
    if n_synthetic == 0:  # a fixed step budget: consecutive permutations, cut into full batches
        need = steps * batch
        orders = [torch.randperm(n_real, generator=generator) for _ in range(math.ceil(need / n_real))]
        real = torch.cat(orders)[:need].view(steps, batch)
        return [(real[i], None) for i in range(steps)]
    if config.mixing == "batch":
        n_syn = math.floor(config.synthetic_fraction * batch)
        n_real_batch = batch - n_syn
    else:
        n_syn, n_real_batch = batch, batch
    need = steps * n_real_batch
    orders = [torch.randperm(n_real, generator=generator) for _ in range(math.ceil(need / n_real))]
    real = torch.cat(orders)[:need].view(steps, n_real_batch)
    synthetic = torch.randint(0, n_synthetic, (steps, n_syn), generator=generator)
    return [(real[i], synthetic[i] if n_syn > 0 else None) for i in range(steps)]


@dataclass(frozen=True)
class StepBatch:
    """One step's batch as this rank trains on it: ``rows`` of the global batch (real rows, then synthetic
    rows; all of it on one process), as float images in [0, 1], labels and per-row loss weights on the
    device. ``size`` and ``synthetic`` count the global batch's rows and its synthetic rows."""

    x: Tensor
    y: Tensor
    weights: Tensor
    rows: slice
    size: int
    synthetic: int


def assemble_batch(
    real_index: Tensor,
    syn_index: Tensor | None,
    *,
    real_images: Tensor,
    real_labels: Tensor,
    syn_images: np.ndarray | Any = None,
    syn_labels: Tensor | None = None,
    config: TradesConfig,
    device: torch.device,
) -> StepBatch:
    """The batch of one step of :func:`epoch_plan`: this rank's rows of the real then synthetic images and
    their loss weights, 1 / B each, or for ``mixing="loss"`` (eq. 3) eta / n_real on the real rows and
    (1 - eta) / n_synthetic on the synthetic ones. Only this rank's rows of the synthetic set are read (it may
    be memory-mapped numpy rows: ``load_synthetic`` over .npy shards). Draws nothing."""
    n_r, n_s = len(real_index), len(syn_index) if syn_index is not None else 0
    rows = local_rows(n_r + n_s)
    local_real = real_index[rows.start : min(rows.stop, n_r)]
    x = to_unit(real_images[local_real], device)
    y = real_labels[local_real].to(device)
    weights = torch.full((n_r + n_s,), 1.0 / (n_r + n_s))
    if syn_index is not None:
        assert syn_labels is not None
        local_syn = syn_index[max(rows.start - n_r, 0) : max(rows.stop - n_r, 0)]
        syn_rows = torch.from_numpy(np.ascontiguousarray(syn_images[local_syn.numpy()]))
        x = torch.cat([x, to_unit(syn_rows, device)])
        y = torch.cat([y, syn_labels[local_syn].to(device)])
        if config.mixing == "loss":  # eq. (3): eta * mean over real + (1 - eta) * mean over synthetic
            weights = torch.cat([torch.full((n_r,), config.eta / n_r),
                                 torch.full((n_s,), (1 - config.eta) / n_s)])  # fmt: skip
    weights = weights[rows].to(device)  # this rank's share of the global batch's weights
    return StepBatch(x=x, y=y, weights=weights, rows=rows, size=n_r + n_s, synthetic=n_s)


def planned_synthetic_share(n_real: int, n_synthetic: int, config: TradesConfig) -> float:
    """The share of synthetic rows in every step of :func:`epoch_plan` (the same in every epoch): floor(f B)
    of B ("batch" mixing), B beside B real ("loss" mixing, eq. 3), 0 without synthetic data."""
    if n_synthetic == 0:
        return 0.0
    if config.mixing == "batch":
        return math.floor(config.synthetic_fraction * config.batch_size) / config.batch_size
    return 0.5
