"""TRADES training throughput: our trainer against a plain re-implementation of the published algorithm.

``core.training.trades`` has no single-step function (the step is inline in ``train_trades``), so the
comparison times WHOLE short ``train_trades`` runs, subtracting nothing, against a plain loop running the same
number of steps on the same model, batch and attack:

- ours: one ``train_trades(train, val, config=TradesConfig(epochs=1, batch_size=B, steps=K, ...))`` call on a
  synthetic-free set of ``B * --train-steps`` random uint8 images, in a fresh output directory. It includes
  building the model (``build_classifier`` + Kaiming init), the optimiser, the per-step uint8 -> float
  conversion, the LR schedule, the PGD-KL attack (``trades_adversary``, eval mode) and the TRADES loss,
  backward and SGD step, then the end of the epoch: a validation pass over 1 image (``eval_steps=0``,
  ``eval_max=1``), the checkpoint and two ``save_classifier`` writes and ``metrics.json``. The EMA is off by
  default (``--ema-decay 0``: the published algorithm has none; pass 0.995 to include our default).
- plain: written here from the formulas of Zhang et al. 2019 (not from any code base): build the same
  architecture and an SGD optimiser (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4), then per step, in
  eval mode, p = softmax f(x) (no grad), x' = x + 0.001 N(0, I), and K times x' <- Proj_{B(x, eps) ∩ [0,1]}(x'
  + alpha sign grad_x' KL(p || softmax f(x'))); then in train mode
  loss = CE(f(x), y) + beta * (1/B) sum_i KL(softmax f(x_i) || softmax f(x'_i)) (gradients through both
  terms), backward, SGD step. The data are float tensors made once before timing.
- ours, step functions (extra column, for attribution): the same loop as plain but with our own pieces
  (``trades_adversary`` + ``trades_loss`` + our optimiser), i.e. our trainer's step without its bookkeeping.

(The brief this was written for put the KL as KL(f(x_adv) || f(x)); the TRADES paper's, and our
``trades_loss``'s, is KL(f(x) || f(x_adv)); the cost is the same.)

Images per second = B * train steps / time of the call (see the clock below); medians over interleaved rounds
(ours, plain, step functions, then the reverse order, ...). Shapes: digits (SmallCNN, 16 x 16 x 1, batch 128)
and cifar10 (WRN, 32 x 32 x 3, batch 16; WRN-16-4 by default on a CPU, ``--wrn-depth 28 --wrn-widen 10`` for
the paper's).

Timing uses the process CPU time on a CPU (``--clock auto``: with one torch thread it is far less disturbed by
other load on a shared machine than elapsed time) and elapsed time on CUDA (``--clock wall`` forces elapsed
time).

    .venv/bin/python benchmarks/trades_step.py
    .venv/bin/python benchmarks/trades_step.py --shapes cifar10 --batch 128 --wrn-depth 28 --wrn-widen 10 \\
        --train-steps 10 --device cuda
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import add_run_options, print_table, selected_shapes, start_run, timed, write_report
from torch import Tensor, nn

from core.data import DatasetInfo, ImageDataset
from core.models import build_classifier
from core.training.trades import (
    TradesConfig,
    kaiming_init,
    make_optimizer,
    trades_adversary,
    trades_loss,
    train_trades,
)

SHAPES: dict[str, dict[str, Any]] = {
    "digits": {"arch": "small_cnn", "image_size": 16, "channels": 1, "batch": 128, "train_steps": 5},
    "cifar10": {"arch": "wrn", "image_size": 32, "channels": 3, "batch": 16, "train_steps": 2},
}
EPS, STEP_SIZE, BETA = 8 / 255, 2 / 255, 6.0


# ------------------------------------------------------------------------------- the plain implementation


def plain_trades_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, *, eps: float,
    step_size: float, steps: int, beta: float,
) -> Tensor:
    """One TRADES step from the paper's formulas (see the module docstring)."""
    model.eval()
    with torch.no_grad():
        p_natural = F.softmax(model(x), dim=1)
    x_adv = x + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            divergence = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_natural, reduction="sum")
            (grad,) = torch.autograd.grad(divergence, x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    logits = model(x)
    logits_adv = model(x_adv.detach())
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
    loss = F.cross_entropy(logits, y) + beta * robust
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# ------------------------------------------------------------------------------------------- the runs


def make_data(spec: dict[str, Any], n: int, seed: int) -> ImageDataset:
    rng = np.random.default_rng(seed)
    size, channels = spec["image_size"], spec["channels"]
    images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    return ImageDataset(images, labels, DatasetInfo(name=f"random-{size}", num_classes=10, image_size=size,
                                                    channels=channels))


def bench_shape(name: str, spec: dict[str, Any], args: argparse.Namespace, device: torch.device) -> dict:
    batch, n_steps = spec["batch"], spec["train_steps"]
    arch_options = {"depth": args.wrn_depth, "widen_factor": args.wrn_widen} if spec["arch"] == "wrn" else {}
    model_label = (f"WRN-{args.wrn_depth}-{args.wrn_widen}" if spec["arch"] == "wrn"
                   else "small_cnn (w32, 128 features)")
    train = make_data(spec, batch * n_steps, args.seed)
    val = make_data(spec, 1, args.seed + 1)
    config = TradesConfig(epochs=1, batch_size=batch, steps=args.pgd_steps, eps=EPS, step_size=STEP_SIZE,
                          beta=BETA, ema_decay=args.ema_decay, arch=spec["arch"], arch_options=arch_options,
                          eval_steps=0, eval_max=1, eval_batch_size=1)
    x_all, y_all = train.to_tensors(device)
    tmp = Path(tempfile.mkdtemp(prefix="trades-step-"))

    def build() -> nn.Module:
        return build_classifier(spec["arch"], num_classes=10, channels=spec["channels"],
                                image_size=spec["image_size"], **arch_options).to(device)

    def ours(data: ImageDataset = train) -> None:
        train_trades(data, val, config=config, out_dir=tmp / "run", seed=args.seed, device=device)

    def plain(steps: int = n_steps) -> None:
        model = build()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                    weight_decay=5e-4)
        for i in range(steps):
            x, y = x_all[i * batch : (i + 1) * batch], y_all[i * batch : (i + 1) * batch]
            plain_trades_step(model, optimizer, x, y, eps=EPS, step_size=STEP_SIZE, steps=args.pgd_steps,
                              beta=BETA)

    def step_fns(steps: int = n_steps) -> None:
        model = build()
        kaiming_init(model)
        optimizer = make_optimizer(model, config)
        generator = torch.Generator().manual_seed(args.seed)
        for i in range(steps):
            x, y = x_all[i * batch : (i + 1) * batch], y_all[i * batch : (i + 1) * batch]
            x_adv = trades_adversary(model, x, eps=EPS, step_size=STEP_SIZE, steps=args.pgd_steps,
                                     generator=generator)
            model.train()
            loss, _ = trades_loss(model, x, y, x_adv, beta=BETA)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    sides: dict[str, Callable[[], None]] = {"ours": ours, "plain": plain, "ours_step_fns": step_fns}
    times: dict[str, list[float]] = {k: [] for k in sides}
    try:
        ours(train.subset(range(batch)))  # warm-up: one step of each
        plain(1)
        step_fns(1)
        for round_ in range(args.repeats):
            order = list(sides.items())
            for side, fn in order if round_ % 2 == 0 else order[::-1]:  # ABBA order
                shutil.rmtree(tmp / "run", ignore_errors=True)  # a fresh run, not a resume
                times[side].append(timed(fn, device))
                print(f"{name} round {round_ + 1}/{args.repeats} {side}: "
                      f"{batch * n_steps / times[side][-1]:.1f} images/s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ips = {k: batch * n_steps / statistics.median(v) for k, v in times.items()}
    return {
        "shape": name, "model": model_label, "image": f"{spec['image_size']}x{spec['image_size']}x"
        f"{spec['channels']}", "batch": batch, "pgd_steps": args.pgd_steps, "train_steps": n_steps,
        "ema_decay": args.ema_decay, "ours_images_per_s": ips["ours"], "plain_images_per_s": ips["plain"],
        "ours_step_fns_images_per_s": ips["ours_step_fns"],
        "ratio_ours_over_plain": ips["ours"] / ips["plain"],
        "paired_ratio_ours_over_plain": statistics.median(
            p / o for o, p in zip(times["ours"], times["plain"], strict=True)),
        "ratio_step_fns_over_plain": ips["ours_step_fns"] / ips["plain"], "times_s_per_run": times,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="digits,cifar10", help="comma-separated: digits, cifar10")
    parser.add_argument("--batch", type=int, default=None, help="override every shape's batch size")
    parser.add_argument("--train-steps", type=int, default=None, help="override every shape's steps per run")
    parser.add_argument("--pgd-steps", type=int, default=10, help="PGD steps of the inner maximisation")
    parser.add_argument("--wrn-depth", type=int, default=16)
    parser.add_argument("--wrn-widen", type=int, default=4)
    parser.add_argument("--ema-decay", type=float, default=0.0, help="our trainer's EMA (0: off)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds per shape")
    add_run_options(parser)
    args = parser.parse_args()
    device = start_run(args)
    rows = []
    for name, spec in selected_shapes(parser, args, SHAPES, {"batch": "batch", "train_steps": "train_steps"}):
        rows.append(bench_shape(name, spec, args, device))

    print(f"TRADES training throughput (PGD-KL {args.pgd_steps} steps, eps 8/255, step 2/255, beta 6): whole "
          f"train_trades runs vs a plain loop, {args.threads} thread(s), {args.device}, {args.clock} clock, "
          f"median of {args.repeats} interleaved rounds")
    print_table([
        ("shape", "shape", "<8"), ("model", "model", "<30"), ("batch", "batch", ">5"),
        ("steps", "train_steps", ">5"), ("ours img/s", "ours_images_per_s", ">11.2f"),
        ("plain img/s", "plain_images_per_s", ">12.2f"), ("ours/plain", "ratio_ours_over_plain", ">11.3f"),
        ("paired", "paired_ratio_ours_over_plain", ">7.3f"),
        ("step fns img/s", "ours_step_fns_images_per_s", ">15.2f"),
        ("step fns/plain", "ratio_step_fns_over_plain", ">15.3f"),
    ], rows)
    print("ours: whole train_trades runs (nothing subtracted); step fns: our trades_adversary + trades_loss "
          "in the plain loop; paired: median over rounds of that round's ours/plain")
    if args.json is not None:
        write_report(args.json, "trades_step", args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
