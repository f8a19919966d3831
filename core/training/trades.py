"""TRADES adversarial training (Zhang et al. 2019) on real plus synthetic data (paper eq. 3).

Per sample:  loss = CE(f(x), y) + beta * KL( softmax f(x) || softmax f(x_adv) ),  averaged over the batch,
where x_adv maximises the KL term in the L-inf ball B(x, eps) ∩ [0, 1] by PGD (k steps of size alpha, signed
gradient, start x + 0.001 N(0, I) as in the official code, or uniform in the ball as in Gowal et al. 2021),
with the model in eval mode during the attack like the official implementation.

Real and synthetic data are mixed in one of two ways:

- ``mixing="batch"`` (Wang et al. 2023; Gowal et al. 2021): every batch of B holds floor(f B) synthetic images
  drawn with replacement plus B - floor(f B) real ones (f = ``synthetic_fraction``, 0.7 by default);
- ``mixing="loss"`` (paper eq. 3): every step takes B real and B synthetic images and minimises
  eta * mean_real(loss) + (1 - eta) * mean_synthetic(loss).

Either way one "epoch" is ceil(n_real / B) steps whatever the synthetic set's size, and the real images of an
epoch follow a fresh permutation (continued by further permutations when the batches need more).

Recipe (Gowal et al. 2021, used by the paper): SGD with Nesterov momentum 0.9, weight decay 5e-4 on weights
but not on biases and normalisation parameters, a cosine or one-cycle learning-rate schedule, an EMA of the
weights (0.995, BatchNorm statistics copied) that is what gets evaluated and saved, optional label smoothing,
and the best epoch chosen by PGD accuracy on a held-out validation set (robust overfitting is real).

The options, schedules and batch plans live in :mod:`core.training.trades_plan` (re-exported here); this
module holds the loss, its inner attack and the training loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.data import ImageDataset
from core.models import build_classifier, save_classifier
from core.progress import ProgressFn, Stage, report
from core.training.common import EMA, resolve_device, seed_everything
from core.training.distributed import (
    all_reduce_sum,
    is_main,
    rank_device,
    unwrap,
    world_size,
    wrap_model,
)
from core.training.pgd import eval_mode, project_linf, uniform_start
from core.training.robustness import pgd_robust_accuracy
from core.training.run import TrainingRun
from core.training.trades_plan import (
    StepBatch,
    TradesConfig,
    assemble_batch,
    epoch_plan,
    eps_scale,
    kaiming_init,
    learning_rate,
    make_optimizer,
    planned_synthetic_share,
    steps_per_epoch,
)

__all__ = [
    "StepBatch",
    "TradesConfig",
    "assemble_batch",
    "eps_scale",
    "epoch_plan",
    "kaiming_init",
    "learning_rate",
    "make_optimizer",
    "planned_synthetic_share",
    "steps_per_epoch",
    "trades_adversary",
    "trades_loss",
    "train_trades",
]

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
# Everything but the bookkeeping must match for a checkpoint to be resumed (the schedule depends on epochs).
_NOT_RESUME_FIELDS = ("eval_batch_size",)


# --------------------------------------------------------------------------------------------------- the loss


def trades_adversary(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    start: Literal["normal", "uniform"] = "normal",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """x_adv = argmax_{x' in B(x, eps) ∩ [0,1]} KL(softmax f(x) || softmax f(x')) by signed-gradient PGD.

    The model runs in eval mode (each sub-module's flag restored after). x: N x C x H x W in [0, 1].
    ``noise`` (x's shape: N(0, 1) for "normal", U[0, 1) for "uniform") replaces the start's draw from
    ``generator``; the distributed trainer draws it for the global batch and passes each rank its rows.
    """
    x = x.detach()
    with eval_mode(model):
        with torch.no_grad():
            p_natural = F.softmax(model(x), dim=1)  # N x K, fixed target of the inner maximisation
        if start == "normal":
            if noise is None:
                noise_device = generator.device if generator is not None else x.device
                noise = torch.randn(x.shape, generator=generator, device=noise_device, dtype=x.dtype)
            x_adv = project_linf(x + 0.001 * noise.to(x.device), x, eps=eps)
        elif noise is not None:  # the same formula as uniform_start, from the given U[0, 1) draw
            x_adv = project_linf(x + (2.0 * noise.to(x.device) - 1.0) * eps, x, eps=eps)
        else:
            x_adv = uniform_start(x, eps=eps, generator=generator)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_natural, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = project_linf(x_adv.detach() + step_size * grad.sign(), x, eps=eps)
    return x_adv.detach()


def trades_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """TRADES objective: sum_i w_i [CE(f(x_i), y_i) + beta * KL(softmax f(x_i) || softmax f(x_adv_i))].

    ``weights`` (N, summing to 1) default to 1/N (the batch mean). Gradients flow through both f(x) and
    f(x_adv), as in the official code. Returns the loss and its parts (weighted CE, weighted KL, accuracy).
    """
    logits = model(x)  # N x K
    logits_adv = model(x_adv)  # N x K
    ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)  # N
    log_p = F.log_softmax(logits, dim=1)
    kl = (log_p.exp() * (log_p - F.log_softmax(logits_adv, dim=1))).sum(dim=1)  # N
    if weights is None:
        weights = torch.full_like(ce, 1.0 / ce.shape[0])
    ce_part, kl_part = (weights * ce).sum(), (weights * kl).sum()
    loss = ce_part + beta * kl_part
    parts = {
        "ce": float(ce_part.detach()),
        "kl": float(kl_part.detach()),
        "accuracy": float((logits.argmax(1) == y).float().mean()),
    }
    return loss, parts


# ---------------------------------------------------------------------------------------------- the trainer


def _check_compatible(train: ImageDataset, other: ImageDataset, what: str) -> None:
    a, b = train.info, other.info
    if (a.num_classes, a.image_size, a.channels) != (b.num_classes, b.image_size, b.channels):
        raise ValueError(
            f"{what} set ({b.num_classes} classes, {b.image_size}px, {b.channels} channels) does not match "
            f"the training set ({a.num_classes} classes, {a.image_size}px, {a.channels} channels)"
        )
    if len(other) and (other.labels.min() < 0 or other.labels.max() >= a.num_classes):
        raise ValueError(f"{what} labels must lie in [0, {a.num_classes}), got [{other.labels.min()}, "
                         f"{other.labels.max()}]")  # fmt: skip


def train_trades(
    train: ImageDataset,
    val: ImageDataset,
    *,
    synthetic: ImageDataset | None = None,
    config: TradesConfig,
    out_dir: Path | str,
    seed: int,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Adversarially train a classifier with TRADES on ``train`` (+ ``synthetic``); return the final metrics.

    Writes ``out_dir/checkpoint.pt`` after every epoch and resumes from it when present (same weights as an
    uninterrupted run with the same seed). The evaluated model (the EMA when enabled) of the epoch with the
    best PGD accuracy on ``val`` is saved in ``out_dir`` (``model.safetensors`` + ``config.json``, load it
    with ``core.models.load_classifier``), the last epoch's in ``out_dir/final``, the metrics in
    ``metrics.json``; ``synthetic_share_seen`` is the share of synthetic rows in the batches it trained on.
    ``progress`` gets stage "train" per step and "epoch" per epoch; raising ``core.progress.Cancelled`` from
    it stops training (the last finished epoch stays resumable).

    Under ``torch.distributed`` (:mod:`core.training.distributed`) every rank draws the same global batch
    (real and synthetic indices, attack start noise) and trains on its slice of the rows, with DDP averaging
    the gradients; rank 0 alone evaluates, writes files and reports progress.
    """
    _check_inputs(train, val, synthetic)
    n_synthetic = len(synthetic) if synthetic is not None else 0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = rank_device(resolve_device(device))
    data_generator = seed_everything(seed)
    attack_generator = torch.Generator().manual_seed(seed + 1)
    model, net = _build_model(config, train.info, dev)  # DDP when distributed; the rest uses `net`
    optimizer = make_optimizer(net, config)
    ema = EMA(net, config.ema_decay, warmup=config.ema_warmup) if config.ema_decay > 0 else None
    total_steps = steps_per_epoch(len(train), config) * config.epochs
    data = _TrainingData.of(train, synthetic)

    current = asdict(config)
    run = TrainingRun(
        "trades", out=out, config=current, label="TRADES", model=net, optimizer=optimizer, ema=ema,
        generators={"data": data_generator, "attack": attack_generator},
        resume_fields=[name for name in current if name not in _NOT_RESUME_FIELDS],
        best={"epoch": 0, "val_pgd_acc": -1.0, "val_clean_acc": -1.0},
        must_match={"synthetic_count": n_synthetic},
    )
    run.resume(map_location=dev)

    metadata = {"dataset": train.info.to_dict(), "seed": seed, "trades_config": asdict(config),
                "synthetic_count": n_synthetic}  # fmt: skip
    evaluated = ema.module if ema is not None else net
    seen = _RowsSeen()
    for epoch in range(run.epoch, config.epochs):
        began = time.perf_counter()
        plan = epoch_plan(len(train), n_synthetic, config=config, generator=data_generator)
        sums = _train_epoch(
            model, net, optimizer, ema, plan, data, config=config, epoch=epoch, run=run,
            total_steps=total_steps, attack_generator=attack_generator, device=dev, seen=seen,
            progress=progress,
        )
        run.elapsed += time.perf_counter() - began
        if not is_main():  # rank 0 alone evaluates and writes; the others go on to the next epoch
            continue
        val_metrics = pgd_robust_accuracy(
            evaluated, val, eps=config.eps, steps=config.eval_steps, limit=config.eval_max,
            batch_size=config.eval_batch_size, seed=seed, device=dev,
        )
        record = _epoch_record(epoch, optimizer, sums, len(plan), val_metrics)
        if record["val_pgd_acc"] > run.best["val_pgd_acc"]:
            run.best = {"epoch": epoch + 1, "val_pgd_acc": record["val_pgd_acc"],
                        "val_clean_acc": record["val_clean_acc"]}  # fmt: skip
            save_classifier(evaluated, out, config={**metadata, "epoch": epoch + 1, "val": val_metrics})
        run.end_epoch(record, epochs=config.epochs, progress=progress)

    if not is_main():
        return {"kind": "trades", "rank_of_a_distributed_run": True}
    save_classifier(evaluated, out / FINAL_DIR, config={**metadata, "epoch": config.epochs})
    # every epoch's plan has the same make-up, so the epochs after a resume speak for the whole run; a run
    # resumed with no epoch left to train reads it off the plan
    share = seen.share if seen.rows else planned_synthetic_share(len(train), n_synthetic, config)
    metrics = _final_metrics(run, net, train, config=config, seed=seed, out=out, n_synthetic=n_synthetic,
                             synthetic_share_seen=share)
    run.write_metrics(metrics)
    return metrics


def _check_inputs(train: ImageDataset, val: ImageDataset, synthetic: ImageDataset | None) -> None:
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"train ({len(train)}) and val ({len(val)}) sets must not be empty")
    _check_compatible(train, val, "validation")
    if synthetic is not None:
        _check_compatible(train, synthetic, "synthetic")


def _build_model(config: TradesConfig, info: Any, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The classifier to train (He-initialised unless ``config.init`` says otherwise) on ``device``: the model
    the steps run (DDP when distributed) and the module inside it (what the optimiser, EMA and files see)."""
    net = build_classifier(
        config.arch, num_classes=info.num_classes, channels=info.channels, image_size=info.image_size,
        **config.arch_options,
    )
    if config.init == "kaiming":
        kaiming_init(net)
    model = wrap_model(net.to(device), device)
    return model, unwrap(model)


@dataclass(frozen=True)
class _TrainingData:
    """The training rows as the batches read them: real images and labels as tensors, synthetic images as
    numpy rows gathered per batch (a memory-mapped set, ``load_synthetic`` over .npy shards, is read only for
    the rows of each batch, never as a whole)."""

    real_images: Tensor
    real_labels: Tensor
    syn_images: Any = None
    syn_labels: Tensor | None = None

    @classmethod
    def of(cls, train: ImageDataset, synthetic: ImageDataset | None) -> _TrainingData:
        real_images, real_labels = torch.from_numpy(train.images), torch.from_numpy(train.labels)
        if synthetic is None:
            return cls(real_images, real_labels)
        return cls(real_images, real_labels, synthetic.images, torch.from_numpy(synthetic.labels))


@dataclass
class _RowsSeen:
    """Rows of the global batches trained on (by this process, since a resume) and how many were synthetic."""

    rows: int = 0
    synthetic: int = 0

    @property
    def share(self) -> float:
        return self.synthetic / self.rows


def _train_epoch(
    model: nn.Module,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    plan: list[tuple[Tensor, Tensor | None]],
    data: _TrainingData,
    *,
    config: TradesConfig,
    epoch: int,
    run: TrainingRun,
    total_steps: int,
    attack_generator: torch.Generator,
    device: torch.device,
    seen: _RowsSeen,
    progress: ProgressFn | None,
) -> dict[str, float]:
    """Train on every step of ``plan`` (advancing ``run.step``); return the sums over the steps (summed over
    the ranks) of the loss, its CE and KL parts and the clean training accuracy."""
    sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "accuracy": 0.0}
    for real_index, syn_index in plan:
        batch = assemble_batch(
            real_index, syn_index, real_images=data.real_images, real_labels=data.real_labels,
            syn_images=data.syn_images, syn_labels=data.syn_labels, config=config, device=device,
        )
        noise = _start_noise(batch, config=config, generator=attack_generator)
        step_loss, parts = _train_step(model, net, optimizer, ema, batch, noise, config=config, step=run.step,
                                       total_steps=total_steps)  # fmt: skip
        run.step += 1
        seen.rows += batch.size
        seen.synthetic += batch.synthetic
        sums["loss"] += step_loss
        sums["ce"] += parts["ce"]
        sums["kl"] += parts["kl"]
        sums["accuracy"] += parts["accuracy"] * len(batch.y) / batch.size
        report(progress, Stage.TRAIN, run.step, total_steps, message=f"epoch {epoch + 1}/{config.epochs}",
               metrics={"step": run.step, "loss": step_loss, "ce": parts["ce"], "kl": parts["kl"],
                        "accuracy": parts["accuracy"]})  # fmt: skip
    return dict(zip(sums, all_reduce_sum(list(sums.values())), strict=True))


def _start_noise(batch: StepBatch, *, config: TradesConfig, generator: torch.Generator) -> Tensor:
    """The attack's start noise for the global batch (N(0, 1) or U[0, 1), per ``config.start``), drawn from
    ``generator`` on the CPU; this rank's rows of it."""
    noise_shape = (batch.size, *batch.x.shape[1:])
    noise = (torch.randn(noise_shape, generator=generator) if config.start == "normal"
             else torch.rand(noise_shape, generator=generator))  # fmt: skip
    return noise[batch.rows]


def _train_step(
    model: nn.Module,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    batch: StepBatch,
    noise: Tensor,
    *,
    config: TradesConfig,
    step: int,
    total_steps: int,
) -> tuple[float, dict[str, float]]:
    """One optimiser step at 0-based ``step``: the scheduled learning rate and eps, the inner attack, the
    TRADES loss and its gradient, the EMA update. Returns the step's loss and its parts."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, total_steps, config=config)
    scale = eps_scale(step, total_steps, config)
    x_adv = trades_adversary(
        net, batch.x, eps=config.eps * scale, step_size=config.step_size * scale, steps=config.steps,
        start=config.start,
        noise=noise,
    )
    model.train()
    loss, parts = trades_loss(
        model, batch.x, batch.y, x_adv, beta=config.beta, label_smoothing=config.label_smoothing,
        weights=batch.weights,
    )
    optimizer.zero_grad(set_to_none=True)
    # DDP averages over the ranks; scaled by the world size the sum of the local weighted losses is the
    # one-process loss
    (loss * world_size()).backward()
    optimizer.step()
    if ema is not None:
        ema.update(net)
    return float(loss.detach()), parts


def _epoch_record(epoch: int, optimizer: torch.optim.Optimizer, sums: dict[str, float], n_steps: int,
                  val_metrics: dict[str, float]) -> dict[str, Any]:
    """The history's record of the 0-based ``epoch``: the training means over its ``n_steps`` steps and the
    validation accuracies."""
    return {
        "epoch": epoch + 1,
        "lr": optimizer.param_groups[0]["lr"],
        "train_loss": sums["loss"] / n_steps,
        "train_ce": sums["ce"] / n_steps,
        "train_kl": sums["kl"] / n_steps,
        "train_clean_acc": sums["accuracy"] / n_steps,
        "val_clean_acc": val_metrics["clean_acc"],
        "val_pgd_acc": val_metrics["pgd_acc"],
    }


def _final_metrics(run: TrainingRun, net: nn.Module, train: ImageDataset, *, config: TradesConfig, seed: int,
                   out: Path, n_synthetic: int, synthetic_share_seen: float) -> dict[str, Any]:
    history, best = run.history, run.best
    assert best is not None
    final = history[-1] if history else {}
    return {
        "kind": "trades",
        "dataset": train.info.name,
        "seed": seed,
        "arch": config.arch,
        "epochs": config.epochs,
        "steps": run.step,
        "steps_per_epoch": steps_per_epoch(len(train), config),
        "real_count": len(train),
        "synthetic_count": n_synthetic,
        "synthetic_share_seen": synthetic_share_seen,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_seconds": round(run.elapsed, 2),
        "best_epoch": int(best["epoch"]),
        "best_val_pgd_acc": best["val_pgd_acc"],
        "best_val_clean_acc": best["val_clean_acc"],
        "final_val_pgd_acc": final.get("val_pgd_acc"),
        "final_val_clean_acc": final.get("val_clean_acc"),
        "history": history,
        "config": asdict(config),
        "model_dir": str(out),
        "final_model_dir": str(out / FINAL_DIR),
    }
