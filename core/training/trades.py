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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.data import ImageDataset
from core.data.images import to_unit
from core.models import build_classifier, save_classifier
from core.progress import ProgressFn, Stage, report
from core.training.common import EMA, resolve_device, seed_everything
from core.training.distributed import (
    all_reduce_sum,
    is_main,
    local_rows,
    rank_device,
    unwrap,
    world_size,
    wrap_model,
)
from core.training.pgd import eval_mode, project_linf, uniform_start
from core.training.robustness import pgd_robust_accuracy
from core.training.run import TrainingRun
from core.training.trades_plan import (
    TradesConfig,
    epoch_plan,
    eps_scale,
    kaiming_init,
    learning_rate,
    make_optimizer,
    steps_per_epoch,
)

__all__ = [
    "TradesConfig",
    "eps_scale",
    "epoch_plan",
    "kaiming_init",
    "learning_rate",
    "make_optimizer",
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
    ``metrics.json``.
    ``progress`` gets stage "train" per step and "epoch" per epoch; raising ``core.progress.Cancelled`` from
    it stops training (the last finished epoch stays resumable).

    Under ``torch.distributed`` (:mod:`core.training.distributed`) every rank draws the same global batch
    (real and synthetic indices, attack start noise) and trains on its slice of the rows, with DDP averaging
    the gradients; rank 0 alone evaluates, writes files and reports progress.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"train ({len(train)}) and val ({len(val)}) sets must not be empty")
    _check_compatible(train, val, "validation")
    if synthetic is not None:
        _check_compatible(train, synthetic, "synthetic")
    n_synthetic = len(synthetic) if synthetic is not None else 0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = rank_device(resolve_device(device))
    data_generator = seed_everything(seed)
    attack_generator = torch.Generator().manual_seed(seed + 1)
    info = train.info
    model = build_classifier(
        config.arch, num_classes=info.num_classes, channels=info.channels, image_size=info.image_size,
        **config.arch_options,
    )
    if config.init == "kaiming":
        kaiming_init(model)
    model = wrap_model(model.to(dev), dev)  # DDP when distributed; optimiser, EMA, attack and files use `net`
    net = unwrap(model)
    optimizer = make_optimizer(net, config)
    ema = EMA(net, config.ema_decay, warmup=config.ema_warmup) if config.ema_decay > 0 else None
    per_epoch = steps_per_epoch(len(train), config)
    total_steps = per_epoch * config.epochs

    real_images, real_labels = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    if synthetic is not None:
        # numpy rows, gathered per batch: a memory-mapped set (load_synthetic over .npy shards) is read only
        # for the rows of each batch, never as a whole
        syn_images, syn_labels = synthetic.images, torch.from_numpy(synthetic.labels)

    current = asdict(config)
    run = TrainingRun(
        "trades", out=out, config=current, label="TRADES", model=net, optimizer=optimizer, ema=ema,
        generators={"data": data_generator, "attack": attack_generator},
        resume_fields=[name for name in current if name not in _NOT_RESUME_FIELDS],
        best={"epoch": 0, "val_pgd_acc": -1.0, "val_clean_acc": -1.0},
        must_match={"synthetic_count": n_synthetic},
    )
    run.resume(map_location=dev)
    step, elapsed = run.step, run.elapsed

    metadata = {"dataset": info.to_dict(), "seed": seed, "trades_config": asdict(config),
                "synthetic_count": n_synthetic}  # fmt: skip
    evaluated = ema.module if ema is not None else net
    for epoch in range(run.epoch, config.epochs):
        began = time.perf_counter()
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "accuracy": 0.0}
        plan = epoch_plan(len(train), n_synthetic, config=config, generator=data_generator)
        for real_index, syn_index in plan:
            # the global batch is real rows then synthetic rows; this rank keeps rows[a:b] of it (all of it
            # on one process), reading only those rows of a memory-mapped synthetic set
            n_r, n_s = len(real_index), len(syn_index) if syn_index is not None else 0
            rows = local_rows(n_r + n_s)
            local_real = real_index[rows.start : min(rows.stop, n_r)]
            x = to_unit(real_images[local_real], dev)
            y = real_labels[local_real].to(dev)
            weights = torch.full((n_r + n_s,), 1.0 / (n_r + n_s))
            if syn_index is not None:
                local_syn = syn_index[max(rows.start - n_r, 0) : max(rows.stop - n_r, 0)]
                syn_rows = torch.from_numpy(np.ascontiguousarray(syn_images[local_syn.numpy()]))
                x = torch.cat([x, to_unit(syn_rows, dev)])
                y = torch.cat([y, syn_labels[local_syn].to(dev)])
                if config.mixing == "loss":  # eq. (3): eta * mean over real + (1 - eta) * mean over synthetic
                    weights = torch.cat([torch.full((n_r,), config.eta / n_r),
                                         torch.full((n_s,), (1 - config.eta) / n_s)])  # fmt: skip
            weights = weights[rows].to(dev)  # this rank's share of the global batch's weights
            noise_shape = (n_r + n_s, *x.shape[1:])
            noise = (torch.randn(noise_shape, generator=attack_generator) if config.start == "normal"
                     else torch.rand(noise_shape, generator=attack_generator))[rows]  # fmt: skip
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, config=config)
            scale = eps_scale(step, total_steps, config)
            x_adv = trades_adversary(
                net, x, eps=config.eps * scale, step_size=config.step_size * scale, steps=config.steps,
                start=config.start,
                noise=noise,
            )
            model.train()
            loss, parts = trades_loss(
                model, x, y, x_adv, beta=config.beta, label_smoothing=config.label_smoothing, weights=weights
            )
            optimizer.zero_grad(set_to_none=True)
            # DDP averages over the ranks; scaled by the world size the sum of the local weighted losses
            # is the one-process loss
            (loss * world_size()).backward()
            optimizer.step()
            if ema is not None:
                ema.update(net)
            step += 1
            step_loss = float(loss.detach())
            sums["loss"] += step_loss
            sums["ce"] += parts["ce"]
            sums["kl"] += parts["kl"]
            sums["accuracy"] += parts["accuracy"] * len(y) / (n_r + n_s)
            report(progress, Stage.TRAIN, step, total_steps, message=f"epoch {epoch + 1}/{config.epochs}",
                   metrics={"step": step, "loss": step_loss, "ce": parts["ce"], "kl": parts["kl"],
                            "accuracy": parts["accuracy"]})  # fmt: skip
        sums = dict(zip(sums, all_reduce_sum(list(sums.values())), strict=True))
        elapsed += time.perf_counter() - began
        if not is_main():  # rank 0 alone evaluates and writes; the others go on to the next epoch
            continue
        val_metrics = pgd_robust_accuracy(
            evaluated, val, eps=config.eps, steps=config.eval_steps, limit=config.eval_max,
            batch_size=config.eval_batch_size, seed=seed, device=dev,
        )
        record = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": sums["loss"] / len(plan),
            "train_ce": sums["ce"] / len(plan),
            "train_kl": sums["kl"] / len(plan),
            "train_clean_acc": sums["accuracy"] / len(plan),
            "val_clean_acc": val_metrics["clean_acc"],
            "val_pgd_acc": val_metrics["pgd_acc"],
        }
        if record["val_pgd_acc"] > run.best["val_pgd_acc"]:
            run.best = {"epoch": epoch + 1, "val_pgd_acc": record["val_pgd_acc"],
                        "val_clean_acc": record["val_clean_acc"]}  # fmt: skip
            save_classifier(evaluated, out, config={**metadata, "epoch": epoch + 1, "val": val_metrics})
        run.step, run.elapsed = step, elapsed
        run.end_epoch(record, epochs=config.epochs, progress=progress)

    if not is_main():
        return {"kind": "trades", "rank_of_a_distributed_run": True}
    save_classifier(evaluated, out / FINAL_DIR, config={**metadata, "epoch": config.epochs})
    history, best = run.history, run.best
    final = history[-1] if history else {}
    metrics: dict[str, Any] = {
        "kind": "trades",
        "dataset": info.name,
        "seed": seed,
        "arch": config.arch,
        "epochs": config.epochs,
        "steps": step,
        "steps_per_epoch": per_epoch,
        "real_count": len(train),
        "synthetic_count": n_synthetic,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_seconds": round(elapsed, 2),
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
    run.write_metrics(metrics)
    return metrics
