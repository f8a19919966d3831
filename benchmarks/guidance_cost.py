"""What contrastive guidance costs per generated image, side by side with vanilla DDIM in one run.

Each configuration generates the same images (same seed, same models) with ``core.generation.generate``; the
configurations are interleaved over ``--repeats`` rounds so that load on a shared machine hits them alike, and
the report gives the median seconds per image and the ratio to vanilla DDIM. Models are untrained (timing
does not depend on the weights): the tiny digits UNet and the SmallCNN feature extractor by default, or the
DDPM CIFAR-10 UNet shape with the paper's WRN-28-10 with ``--preset cifar10`` (slow on a CPU).

    .venv/bin/python benchmarks/guidance_cost.py --count 64 --batch-size 64 --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import print_table

from core.diffusion import load_diffusion_model
from core.generation import GenerationParams, generate
from core.models import build_classifier, build_unet, load_classifier, save_classifier, save_diffusion

CONFIGS: dict[str, dict[str, object]] = {
    "vanilla DDIM": {"loss": "none", "lam": 0.0},
    "InfoNCE": {"loss": "infonce", "lam": 100.0},
    "HNM": {"loss": "hnm", "lam": 100.0},
    "HNM + embedding head": {"loss": "hnm", "lam": 100.0, "embedding_head": True},
    "HNM, window t >= 400": {"loss": "hnm", "lam": 100.0, "guidance_window": (400, 999)},
}


def build_models(root: Path, preset: str) -> tuple[Path, Path]:
    torch.manual_seed(0)
    if preset == "digits":
        unet = build_unet("tiny", image_size=16, channels=1)
        cnn = build_classifier("small_cnn", num_classes=10, channels=1, image_size=16)
    else:
        unet = build_unet("ddpm_cifar10", image_size=32, channels=3)
        cnn = build_classifier("wrn", num_classes=10, channels=3, image_size=32)  # WRN-28-10, as the paper
    save_diffusion(unet, root / "unet")
    save_classifier(cnn, root / "classifier")
    return root / "unet", root / "classifier"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("digits", "cifar10"), default="digits")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        unet_dir, cnn_dir = build_models(Path(tmp), args.preset)
        diffusion = load_diffusion_model(unet_dir, device=args.device)
        classifier = load_classifier(cnn_dir, device=args.device)
        times: dict[str, list[float]] = {name: [] for name in CONFIGS}
        generate(diffusion, classifier, count=min(4, args.count), seed=0, device=args.device,  # warm-up
                 params=GenerationParams(loss="hnm", lam=1.0, tau=0.5, steps=2, schedule="uniform",
                                         guidance_window=None, batch_size=4))
        for round_ in range(args.repeats):
            for name, options in CONFIGS.items():
                params = GenerationParams(
                    tau=0.5, steps=args.steps, schedule="uniform", batch_size=args.batch_size,
                    **({"guidance_window": None} | options),  # type: ignore[arg-type]
                )
                start = time.perf_counter()
                generate(diffusion, classifier, params=params, count=args.count, seed=0, device=args.device)
                times[name].append((time.perf_counter() - start) / args.count)
                print(f"round {round_ + 1}/{args.repeats} {name}: {times[name][-1] * 1e3:.1f} ms/image",
                      file=sys.stderr)

    base = statistics.median(times["vanilla DDIM"])
    rows = [
        {"config": name, "ms_per_image": statistics.median(t) * 1e3,
         "ratio_to_vanilla": statistics.median(t) / base}
        for name, t in times.items()
    ]
    print(f"{args.preset}: {args.count} images, batch {args.batch_size}, {args.steps} DDIM steps, "
          f"{args.threads} thread(s), {args.device}, median of {args.repeats} interleaved rounds")
    print_table([
        ("configuration", "config", "<24"), ("ms / image", "ms_per_image", ">11.1f"),
        ("x vanilla", "ratio_to_vanilla", ">10.2f"),
    ], rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
