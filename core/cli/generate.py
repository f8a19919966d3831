"""``cdp generate``: sample a labelled synthetic set with (contrastive-guided) DDIM.

Writes ``OUT/shards/<k>.npz`` (uint8 NHWC ``image``, int64 ``label`` = pseudo-labels, float32 ``confidence``
and ``entropy``; ``class_label`` for a conditional model), ``OUT/preview.png`` (a grid of the first 100
images) and ``OUT/metrics.json`` (the parameters, ``core.quality.sample_metrics`` and
``GeneratedSet.guidance_summary``). ``cdp train trades --synthetic OUT`` reads the shards back. The metrics
go to stdout (one JSON object with ``--json``); the progress bar and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from core import options
from core.cli.common import ProgressBar, integer, number
from core.data.images import grid_png
from core.settings import get_settings

SHARD_NAME = re.compile(r"\d+\.npz")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="sample a labelled synthetic set (guided DDIM)")
    parser.add_argument("--diffusion", type=Path, required=True, help="diffusers pipeline or UNet directory")
    parser.add_argument("--classifier", type=Path, required=True, help="classifier checkpoint directory")
    parser.add_argument("--count", type=integer(1), required=True, help="number of images")
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: CDP_DEVICE)")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in OUT/shards")
    parser.add_argument("--shard-size", type=integer(1), default=1000, help="images per shard file")
    guidance = parser.add_argument_group("contrastive guidance (paper Algorithm 1)")
    # Every default is core.options' (the paper's, as the API's GenerateSpec); only lambda must be given.
    guidance.add_argument("--loss", choices=options.GEN_LOSSES, default=options.LOSS,
                          help="none = vanilla DDIM")  # fmt: skip
    guidance.add_argument("--lam", type=number(0.0), default=None, help="guidance scale lambda (required)")
    guidance.add_argument("--tau", type=number(0.0, strict=True), default=None,
                          help=f"temperature (default: {options.TAU['hnm']:g} for hnm, "
                          f"{options.TAU['infonce']:g} for infonce)")  # fmt: skip
    guidance.add_argument("--tau-plus", type=number(0.0, maximum=0.999), default=options.TAU_PLUS)
    guidance.add_argument("--beta", type=number(0.0), default=options.BETA, help="HNM concentration")
    guidance.add_argument("--strategy", default=options.STRATEGY, choices=options.STRATEGIES,
                          help="pairs (App. C.1)")  # fmt: skip
    guidance.add_argument("--embedding-head", action="store_true", help="train the online projection head")
    guidance.add_argument("--head-scope", choices=options.HEAD_SCOPES, default=options.HEAD_SCOPE,
                          help="with --embedding-head: one head per run or a fresh head per batch")
    guidance.add_argument("--window", type=int, nargs=2, metavar=("LO", "HI"), default=None,
                          help="guide only for LO <= t <= HI (default: all steps but the first)")  # fmt: skip
    guidance.add_argument("--feature-on", choices=options.FEATURE_ON, default=options.FEATURE_ON_DEFAULT)
    guidance.add_argument("--real-dataset", default=None,
                          help="dataset whose train split feeds real_positive / real_negative")  # fmt: skip
    guidance.add_argument("--data-root", type=Path, default=None, help="data root (default: CDP_DATA_ROOT)")
    parser.add_argument("--quality-dataset", default=None,
                        help="dataset the diffusion model learned (default: --real-dataset): adds outliers "
                        "and near-copies of its train split to the metrics and to the warnings")
    sampler = parser.add_argument_group("DDIM")
    sampler.add_argument("--steps", type=integer(1), default=options.STEPS)
    sampler.add_argument("--schedule", choices=options.SCHEDULES, default=options.SCHEDULE)
    sampler.add_argument("--eta", type=number(0.0), default=options.ETA)
    sampler.add_argument("--batch-size", type=integer(1), default=options.BATCH_SIZE)
    parser.set_defaults(func=run_generate)


def _params(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from core.generation import GenerationParams

    if args.loss != "none" and args.lam is None:
        raise ValueError("--lam is required with --loss hnm/infonce (use --loss none for vanilla DDIM)")
    if args.strategy in options.REAL_STRATEGIES and args.real_dataset is None:
        raise ValueError(f"--strategy {args.strategy} needs --real-dataset")
    return GenerationParams(
        loss=args.loss,
        lam=options.LAM[args.loss] if args.lam is None else args.lam,  # only "none" gets here without --lam
        tau=options.TAU[args.loss] if args.tau is None else args.tau,
        tau_plus=args.tau_plus,
        beta=args.beta,
        strategy=args.strategy,
        embedding_head=args.embedding_head,
        steps=args.steps,
        schedule=args.schedule,
        eta=args.eta,
        guidance_window=tuple(args.window) if args.window is not None else None,
        batch_size=args.batch_size,
        feature_on=args.feature_on,
        head_scope=args.head_scope,
    )


def _existing_shards(args: argparse.Namespace) -> list[Path]:
    """The shards already under ``--out``; refused unless ``--overwrite``."""
    shard_dir = args.out / "shards"
    existing = (
        [p for p in shard_dir.glob("*.npz") if SHARD_NAME.fullmatch(p.name)] if shard_dir.is_dir() else []
    )
    if existing and not args.overwrite:
        raise ValueError(
            f"{shard_dir} already holds {len(existing)} shard(s); use --overwrite or another --out"
        )
    return existing


def _load_models(args: argparse.Namespace, device: Any) -> tuple[Any, Any]:
    """The diffusion model and the classifier, checked to agree on (channels, image size)."""
    from core.diffusion import load_diffusion_model
    from core.models import load_classifier

    diffusion = load_diffusion_model(args.diffusion, device=device)
    classifier = load_classifier(args.classifier, device=device)
    made = (diffusion.channels, diffusion.image_size)
    taken = (classifier.channels, classifier.build_config["image_size"])
    if made != taken:
        raise ValueError(
            f"classifier {args.classifier} takes (channels, size) {taken}, "
            f"diffusion model {args.diffusion} makes {made}"
        )
    return diffusion, classifier


def _train_images(name: str, args: argparse.Namespace, settings: Any) -> Any:
    from core.data import load_dataset

    root = args.data_root if args.data_root is not None else settings.data_root
    return load_dataset(name, "train", root=root)


def _write_shards(result: Any, args: argparse.Namespace, existing: list[Path]) -> list[str]:
    """Replace the old shards with the new ones (``--shard-size`` images each) and write the preview."""
    shard_dir = args.out / "shards"
    for old in existing:
        old.unlink()
    shard_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    for k, start in enumerate(range(0, len(result.labels), args.shard_size)):
        part = slice(start, start + args.shard_size)
        arrays: dict[str, np.ndarray] = {
            "image": result.images[part],
            "label": result.labels[part].astype(np.int64),
            "confidence": result.confidence[part].astype(np.float32),
            "entropy": result.entropy[part].astype(np.float32),
        }
        if result.class_labels is not None:
            arrays["class_label"] = result.class_labels[part].astype(np.int64)
        target = shard_dir / f"{k}.npz"
        np.savez(target, **arrays)
        files.append(str(target))
    (args.out / "preview.png").write_bytes(grid_png(result.images))
    return files


def _report(metrics: dict[str, Any], args: argparse.Namespace, seconds: float) -> None:
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if args.json:
        print(json.dumps(metrics))
    else:
        print(
            f"generated {metrics['count']} images in {seconds:.1f} s: mean confidence "
            f"{metrics['mean_confidence']:.3f}, classes {metrics['class_histogram']}; shards in "
            f"{args.out / 'shards'}"
        )
    for warning in metrics["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)


def run_generate(args: argparse.Namespace) -> int:
    """``cdp generate``: check, load, sample (with a progress bar), write shards, measure, report."""
    from core.generation import generate
    from core.quality import sample_metrics, sample_quality, sample_warnings
    from core.training.common import resolve_device

    params = _params(args)
    settings = get_settings()
    device = resolve_device(args.device if args.device is not None else settings.device)
    existing = _existing_shards(args)
    diffusion, classifier = _load_models(args, device)
    real = None if args.real_dataset is None else _train_images(args.real_dataset, args, settings)
    real_images = None if real is None else real.images

    bar = ProgressBar()
    began = time.perf_counter()
    try:
        result = generate(diffusion, classifier, params=params, count=args.count, seed=args.seed,
                          real_images=real_images, device=device, progress=bar)  # fmt: skip
    finally:
        bar.close()
    seconds = time.perf_counter() - began
    files = _write_shards(result, args, existing)

    metrics: dict[str, Any] = {
        "params": params.to_dict(),
        "seed": args.seed,
        "diffusion": str(args.diffusion),
        "classifier": str(args.classifier),
        "sampling_seconds": round(seconds, 2),
        "shards": files,
        "preview": str(args.out / "preview.png"),
        "guidance": result.guidance_summary(),
        **sample_metrics(classifier, result.images, result.labels),
    }
    quality_name = args.quality_dataset or args.real_dataset
    if quality_name is not None:
        train = _train_images(quality_name, args, settings)
        metrics.update(sample_quality(result.images, result.labels, real_images_uint8_nhwc=train.images,
                                      num_classes=train.info.num_classes, device=device))
    metrics["warnings"] = sample_warnings(metrics, num_classes=classifier.num_classes)
    _report(metrics, args, seconds)
    return 0
