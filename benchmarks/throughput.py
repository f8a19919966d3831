"""Images per second per sampling configuration, at the CIFAR-10 shape by default (for a GPU estimate).

Each configuration generates the same ``--count`` images (same seed, same untrained models) with
``core.generation.generate``, the service's path: per batch x_T, the (guided) DDIM loop, conversion to uint8,
then pseudo-labelling of all images by the classifier. Configurations are interleaved over ``--repeats``
rounds (the order reversed every other round); the table gives the median images per second, ms per image
and the ratio to vanilla DDIM.

Configurations (uniform DDIM timesteps, eta 0, strategy "previous", ``--lam``, ``--tau``):
vanilla DDIM; HNM; InfoNCE; HNM + embedding head (trained online); HNM only for t >= 400 (window
(400, 999): with 10 steps 900 .. 0, steps at 800 .. 400 are guided, 5 of 10; the first step never is).

Shapes: cifar10 = ddpm_cifar10 UNet, 32 x 32 x 3, batch 8, with WRN-``--wrn-depth``-``--wrn-widen``
(default WRN-16-4 so that a CPU run stays short; ``--wrn-depth 28 --wrn-widen 10`` is the paper's, which
gpu.sh uses); digits = tiny UNet, 16 x 16 x 1, batch 64, SmallCNN.

Timing uses the process CPU time on a CPU (``--clock auto``: with one torch thread it is far less disturbed by
other load on a shared machine than elapsed time) and elapsed time on CUDA (``--clock wall`` forces elapsed
time).

    .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --device cuda --steps 50 --batch-size 128 --count 256 \
        --wrn-depth 28 --wrn-widen 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import torch
from _common import add_run_options, print_table, start_run, timed, write_report

from core.diffusion import DiffusionModel
from core.generation import GenerationParams, generate
from core.models import build_classifier, build_unet, make_scheduler

CONFIGS: dict[str, dict[str, Any]] = {
    "vanilla DDIM": {"loss": "none"},
    "HNM": {"loss": "hnm"},
    "InfoNCE": {"loss": "infonce"},
    "HNM + embedding head": {"loss": "hnm", "embedding_head": True},
    "HNM, window t >= 400": {"loss": "hnm", "guidance_window": (400, 999)},
}
SHAPES: dict[str, dict[str, Any]] = {
    "digits": {"preset": "tiny", "image_size": 16, "channels": 1, "batch": 64},
    "cifar10": {"preset": "ddpm_cifar10", "image_size": 32, "channels": 3, "batch": 8},
}


def build_models(
    args: argparse.Namespace, device: torch.device
) -> tuple[DiffusionModel, torch.nn.Module, str]:
    spec = SHAPES[args.shape]
    torch.manual_seed(args.seed)
    unet = build_unet(spec["preset"], image_size=spec["image_size"], channels=spec["channels"])
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # make_scheduler's, in float64
    assert torch.allclose(betas.float(), make_scheduler(1000).betas)
    diffusion = DiffusionModel(unet=unet.to(device).eval(), alphas_cumprod=torch.cumprod(1 - betas, 0),
                               num_train_timesteps=1000, image_size=spec["image_size"],
                               channels=spec["channels"], num_classes=None)
    if args.shape == "digits":
        clf = build_classifier("small_cnn", num_classes=10, channels=1, image_size=spec["image_size"])
        label = "small_cnn (w32, 128 features)"
    else:
        clf = build_classifier("wrn", num_classes=10, channels=3, image_size=spec["image_size"],
                               depth=args.wrn_depth, widen_factor=args.wrn_widen)
        label = f"WRN-{args.wrn_depth}-{args.wrn_widen}"
    return diffusion, clf.to(device).eval(), label


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="cifar10")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the shape's (cifar10: 8)")
    parser.add_argument("--count", type=int, default=None, help="images per configuration (default: a batch)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--wrn-depth", type=int, default=16)
    parser.add_argument("--wrn-widen", type=int, default=4)
    parser.add_argument("--lam", type=float, default=100.0)
    parser.add_argument("--tau", type=float, default=10.0)
    add_run_options(parser)
    args = parser.parse_args()
    device = start_run(args)
    batch = args.batch_size or SHAPES[args.shape]["batch"]
    count = args.count or batch
    diffusion, classifier, clf_label = build_models(args, device)

    def params(options: dict[str, Any], steps: int = args.steps, batch_size: int = batch) -> GenerationParams:
        return GenerationParams(**({"lam": args.lam, "tau": args.tau, "steps": steps, "schedule": "uniform",
                                    "guidance_window": None, "batch_size": batch_size} | options))

    generate(diffusion, classifier, params=params(CONFIGS["HNM + embedding head"], 2, min(batch, 4)),
             count=min(batch, 4), seed=args.seed, device=device)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for round_ in range(args.repeats):
        order = list(CONFIGS.items())
        for name, options in order if round_ % 2 == 0 else order[::-1]:  # ABBA order
            times[name].append(timed(lambda options=options: generate(
                diffusion, classifier, params=params(options), count=count, seed=args.seed, device=device),
                device))
            print(f"round {round_ + 1}/{args.repeats} {name}: {count / times[name][-1]:.2f} images/s",
                  file=sys.stderr)

    base = statistics.median(times["vanilla DDIM"])
    rows = [{"config": name, "images_per_s": count / statistics.median(t),
             "ms_per_image": statistics.median(t) / count * 1e3,
             "ratio_to_vanilla": statistics.median(t) / base,
             "paired_ratio_to_vanilla": statistics.median(
                 a / b for a, b in zip(t, times["vanilla DDIM"], strict=True)),
             "times_s": t} for name, t in times.items()]
    print(f"{args.shape}: {SHAPES[args.shape]['preset']} UNet + {clf_label}, {count} images per "
          f"configuration, batch {batch}, {args.steps} DDIM steps, {args.threads} thread(s), {args.device}, "
          f"{args.clock} clock, median of {args.repeats} interleaved rounds")
    print_table([
        ("configuration", "config", "<24"), ("images / s", "images_per_s", ">11.3f"),
        ("ms / image", "ms_per_image", ">11.1f"), ("x vanilla", "ratio_to_vanilla", ">10.2f"),
        ("paired", "paired_ratio_to_vanilla", ">7.2f"),
    ], rows)
    print("x vanilla: ratio of the medians (time per image); paired: median over rounds of that round's "
          "ratio")
    if args.json is not None:
        write_report(args.json, "throughput", args, rows, classifier=clf_label, batch=batch, count=count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
