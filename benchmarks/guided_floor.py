"""Guided / unguided DDIM time per image against its floor 1 + cost(feature fwd + bwd) / cost(UNet fwd).

A guided step needs at least one UNet forward (as an unguided step) plus one forward of the feature
extractor f with autograd and one backward to the input, so guided / unguided cannot beat

    floor = 1 + c,   c = cost(f forward + backward w.r.t. x) / cost(UNet forward),

and anything above it is overhead (a second feature pass for the positive, the loss, host syncs, ...). The
sampler never guides the first step (there is no previous state yet), so with S steps the exact floor is
``floor* = 1 + c (S - 1) / S``; both are reported, with ratio / floor and ratio / floor* (goal <= 1.10).

All four quantities are measured side by side in one process, in interleaved rounds (order reversed every
other round): per round the UNet
forward (``predict_eps`` under ``no_grad``, batch B, ``--unit-calls`` calls), the feature forward + backward
(``classifier_feature_fn(clf)`` on a fresh leaf x, loss = <f(x), v> for a fixed random v,
``torch.autograd.grad`` w.r.t. x only), one unguided ``sample`` run and one guided ``sample`` run with
``ContrastiveGuidance(classifier_feature_fn(clf), loss="hnm", lam=--lam, tau=--tau, strategy="previous")``
from the same x_T. Medians over rounds. Models are untrained (eval mode) on ``--device``:

- digits: tiny UNet, 16 x 16 x 1, batch 64, 20 steps; SmallCNN (width 32, 128 features);
- cifar10: ddpm_cifar10 UNet, 32 x 32 x 3, batch 8, 10 steps; WRN-``--wrn-depth``-``--wrn-widen``,
  by default WRN-16-4 (256 features): the paper's WRN-28-10 (``--wrn-depth 28 --wrn-widen 10``, 640
  features) costs about 1.4 UNet forwards per feature forward + backward, and a 3-round run of it takes
  about 5 minutes on the shared 2-core CPU; gpu.sh runs WRN-28-10.

Timing uses the process CPU time on a CPU (``--clock auto``: with one torch thread it is far less disturbed by
other load on a shared machine than elapsed time) and elapsed time on CUDA (``--clock wall`` forces elapsed
time).

    .venv/bin/python benchmarks/guided_floor.py
    .venv/bin/python benchmarks/guided_floor.py --shapes cifar10 --steps 50 --repeats 10 \
        --wrn-depth 28 --wrn-widen 10 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from _common import add_run_options, print_table, selected_shapes, start_run, timed, write_report

from core.contrastive import ContrastiveGuidance, classifier_feature_fn
from core.diffusion import ddim_timesteps, predict_eps, sample
from core.models import build_classifier, build_unet, make_scheduler

SHAPES: dict[str, dict[str, Any]] = {
    "digits": {"preset": "tiny", "image_size": 16, "channels": 1, "batch": 64, "steps": 20},
    "cifar10": {"preset": "ddpm_cifar10", "image_size": 32, "channels": 3, "batch": 8, "steps": 10},
}


def build_models(name: str, spec: dict[str, Any], args: argparse.Namespace, device: torch.device):
    torch.manual_seed(args.seed)
    unet = build_unet(spec["preset"], image_size=spec["image_size"], channels=spec["channels"])
    if name == "digits":
        clf = build_classifier("small_cnn", num_classes=10, channels=1, image_size=spec["image_size"])
        label = "small_cnn (w32, 128 features)"
    else:
        clf = build_classifier("wrn", num_classes=10, channels=3, image_size=spec["image_size"],
                               depth=args.wrn_depth, widen_factor=args.wrn_widen)
        label = f"WRN-{args.wrn_depth}-{args.wrn_widen} ({clf.feature_dim} features)"
    return unet.to(device).eval(), clf.to(device).eval(), label


def bench_shape(name: str, spec: dict[str, Any], args: argparse.Namespace, device: torch.device) -> dict:
    unet, clf, clf_label = build_models(name, spec, args, device)
    feature_fn = classifier_feature_fn(clf)
    alphas_cumprod = make_scheduler(1000).alphas_cumprod
    batch, steps = spec["batch"], spec["steps"]
    timesteps = ddim_timesteps(1000, steps, "uniform")
    shape = (batch, spec["channels"], spec["image_size"], spec["image_size"])
    gen = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(shape, generator=gen).to(device)
    x_unit = torch.randn(shape, generator=gen).to(device)
    with torch.no_grad():
        v = torch.randn_like(feature_fn(x_unit).flatten(1))

    def unet_forward() -> None:
        with torch.no_grad():
            predict_eps(unet, x_unit, 500)

    def feature_forward_backward() -> None:
        x = x_unit.detach().clone().requires_grad_(True)
        loss = (feature_fn(x).flatten(1) * v).sum()
        torch.autograd.grad(loss, x)

    def unguided() -> torch.Tensor:
        return sample(unet, x_T, alphas_cumprod=alphas_cumprod, timesteps=timesteps)

    def guided() -> torch.Tensor:
        guidance = ContrastiveGuidance(feature_fn, loss="hnm", lam=args.lam, tau=args.tau,
                                       strategy="previous")
        return sample(unet, x_T, alphas_cumprod=alphas_cumprod, timesteps=timesteps, guidance=guidance)

    for fn in (unet_forward, feature_forward_backward):  # warm-up
        fn()
    finite = bool(torch.isfinite(guided()).all())
    times: dict[str, list[float]] = {"unet_forward": [], "feature_fwd_bwd": [], "unguided": [], "guided": []}
    measures: list[tuple[str, Callable[[], object], int, int]] = [  # (name, fn, calls, images per call)
        ("unet_forward", unet_forward, args.unit_calls, 1),
        ("feature_fwd_bwd", feature_forward_backward, args.unit_calls, 1),
        ("unguided", unguided, 1, batch),
        ("guided", guided, 1, batch),
    ]
    for round_ in range(args.repeats):
        for key, fn, calls, per in measures if round_ % 2 == 0 else measures[::-1]:  # ABBA order
            times[key].append(timed(fn, device, calls) / per)
        print(f"{name} round {round_ + 1}/{args.repeats}: " + ", ".join(
            f"{k} {v[-1] * 1e3:.2f} ms" for k, v in times.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    c = med["feature_fwd_bwd"] / med["unet_forward"]
    ratio = med["guided"] / med["unguided"]
    floor = 1.0 + c
    floor_exact = 1.0 + c * (steps - 1) / steps
    per_round = [(g / u) / (1.0 + f / n) for g, u, f, n in zip(
        times["guided"], times["unguided"], times["feature_fwd_bwd"], times["unet_forward"], strict=True)]
    return {
        "shape": name, "unet": spec["preset"], "classifier": clf_label, "batch": batch, "steps": steps,
        "guided_steps": steps - 1, "lam": args.lam, "tau": args.tau, "guided_samples_finite": finite,
        "unet_forward_ms": med["unet_forward"] * 1e3, "feature_fwd_bwd_ms": med["feature_fwd_bwd"] * 1e3,
        "cost_ratio_c": c, "unguided_ms_per_image": med["unguided"] * 1e3,
        "guided_ms_per_image": med["guided"] * 1e3, "ratio": ratio, "floor": floor,
        "ratio_over_floor": ratio / floor, "floor_exact": floor_exact, "ratio_over_floor_exact":
        ratio / floor_exact, "paired_ratio_over_floor": statistics.median(per_round), "times_s": times,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="digits,cifar10", help="comma-separated: digits, cifar10")
    parser.add_argument("--batch", type=int, default=None, help="override every shape's batch size")
    parser.add_argument("--steps", type=int, default=None, help="override every shape's DDIM steps")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds per shape")
    parser.add_argument("--unit-calls", type=int, default=2, help="calls per round for the unit costs")
    parser.add_argument("--wrn-depth", type=int, default=16)
    parser.add_argument("--wrn-widen", type=int, default=4)
    parser.add_argument("--lam", type=float, default=100.0)
    parser.add_argument("--tau", type=float, default=10.0)
    add_run_options(parser)
    args = parser.parse_args()
    device = start_run(args)
    rows = []
    for name, spec in selected_shapes(parser, args, SHAPES, {"batch": "batch", "steps": "steps"}):
        rows.append(bench_shape(name, spec, args, device))

    print(f"guided vs unguided DDIM against the floor 1 + cost(f fwd+bwd) / cost(UNet fwd), HNM, previous "
          f"strategy, {args.threads} thread(s), {args.device}, {args.clock} clock, median of {args.repeats} "
          "interleaved rounds")
    print_table([
        ("shape", "shape", "<8"), ("classifier", "classifier", "<30"), ("batch", "batch", ">5"),
        ("steps", "steps", ">5"), ("UNet ms", "unet_forward_ms", ">9.2f"),
        ("f f+b ms", "feature_fwd_bwd_ms", ">9.2f"), ("unguided ms/img", "unguided_ms_per_image", ">16.2f"),
        ("guided ms/img", "guided_ms_per_image", ">14.2f"), ("ratio", "ratio", ">6.3f"),
        ("floor", "floor", ">6.3f"), ("ratio/floor", "ratio_over_floor", ">12.3f"),
        ("floor*", "floor_exact", ">7.3f"), ("ratio/floor*", "ratio_over_floor_exact", ">13.3f"),
        ("paired r/f", "paired_ratio_over_floor", ">11.3f"),
    ], rows)
    print("UNet ms / f f+b ms: one batched call; floor* = 1 + c (S - 1) / S (the first step is never "
          "guided); paired r/f: median over rounds of that round's ratio / floor")
    if args.json is not None:
        write_report(args.json, "guided_floor", args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
