"""``cdp train diffusion|classifier|trades``: train a DDPM, a standard classifier, or a TRADES model.

Every sub-command takes ``--dataset NAME --epochs N --seed S --out DIR [--json]``; re-running with the same
``--out`` resumes from the checkpoint there. The final metrics go to stdout (one JSON object with ``--json``,
else a short summary); the progress bar and logs go to stderr. The ``trades`` options live in
:mod:`core.cli.train_trades`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import options
from core.cli.common import add_nproc_argument, integer, number, run_on_ranks
from core.cli.train_trades import add_arch_arguments, add_trades_arguments, arch_options, run_trades
from core.models import UNET_PRESETS
from core.settings import get_settings

if TYPE_CHECKING:
    import torch


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help=", ".join(options.DATASET_NAMES))
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default: CDP_DATA_ROOT)")
    parser.add_argument("--epochs", type=integer(1), required=True)
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--out", type=Path, required=True, help="output directory (resumes its checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the final metrics as one JSON object")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: CDP_DEVICE)")
    parser.add_argument("--batch-size", type=integer(1), default=None)
    parser.add_argument("--lr", type=number(0.0, strict=True), default=None)
    parser.add_argument("--limit", type=integer(1), default=None, help="use only the first N training images")
    add_nproc_argument(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a diffusion model, a classifier or a TRADES model")
    sub = parser.add_subparsers(dest="train_kind", metavar="KIND")
    sub.required = True

    diffusion = sub.add_parser(
        "diffusion", help="DDPM (epsilon objective, EMA) saved as a diffusers pipeline"
    )
    _common_arguments(diffusion)
    diffusion.add_argument("--preset", choices=UNET_PRESETS, default=options.UNET, help="UNet shape")
    diffusion.add_argument("--class-conditional", action="store_true", help="learn a class embedding")
    diffusion.add_argument("--ema-decay", type=number(0.0, maximum=0.9999), default=0.999)
    diffusion.add_argument("--warmup-steps", type=integer(0), default=100, help="linear lr warm-up")
    diffusion.add_argument("--flip", action="store_true", help="random horizontal flips (not for digits)")
    diffusion.add_argument("--time-limit", type=number(0.0, strict=True), default=None, metavar="SECONDS",
                           help="stop after the epoch in which training time passes this")  # fmt: skip
    diffusion.set_defaults(func=run_diffusion)

    classifier = sub.add_parser("classifier", help="standard cross-entropy classifier (pseudo-labeler)")
    _common_arguments(classifier)
    add_arch_arguments(classifier)
    classifier.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    classifier.add_argument("--weight-decay", type=number(0.0), default=5e-4)
    classifier.add_argument("--augment", action="store_true", help="random translations (+ --flip)")
    classifier.add_argument("--flip", action="store_true", help="random horizontal flips with --augment")
    classifier.add_argument("--label-smoothing", type=number(0.0, maximum=0.99), default=0.0)
    classifier.set_defaults(func=run_classifier)

    trades = sub.add_parser("trades", help="TRADES adversarial training on real (+ synthetic) data")
    add_trades_arguments(trades)
    trades.set_defaults(func=run_trades)


def _resolve(args: argparse.Namespace) -> tuple[Path | None, torch.device]:
    """The data root and the device (``auto`` resolved) from the arguments, else from the settings."""
    from core.training.common import resolve_device

    settings = get_settings()
    root = args.data_root if args.data_root is not None else settings.data_root
    return root, resolve_device(args.device if args.device is not None else settings.device)


def _load(args: argparse.Namespace, split: str, root: Path | None):  # type: ignore[no-untyped-def]
    from core.data import load_dataset

    dataset = load_dataset(args.dataset, split, root=root)  # type: ignore[arg-type]
    if split == "train" and args.limit is not None:
        dataset = dataset.subset(range(min(args.limit, len(dataset))))
    return dataset


def _emit(args: argparse.Namespace, metrics: dict[str, Any], summary: str) -> int:
    print(json.dumps(metrics) if args.json else summary)
    return 0


def _options(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _train_diffusion_rank(*, args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    """One rank of ``cdp train diffusion`` (all of it with ``--nproc 1``)."""
    from core.training.diffusion import DiffusionTrainConfig, train_diffusion

    root, device = _resolve(args)
    config = DiffusionTrainConfig(
        preset=args.preset,
        epochs=args.epochs,
        class_conditional=args.class_conditional,
        ema_decay=args.ema_decay,
        warmup_steps=args.warmup_steps,
        horizontal_flip=args.flip,
        time_limit_s=args.time_limit,
        **_options(args, ("batch_size", "lr")),
    )
    train = _load(args, "train", root)
    return train_diffusion(train, config=config, out_dir=args.out, seed=args.seed, device=device,
                           progress=progress)  # fmt: skip


def run_diffusion(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    metrics = run_on_ranks(_train_diffusion_rank, args, _resolve(args)[1])
    if metrics is None:  # a torchrun rank other than 0
        return 0
    metrics["wall_seconds"] = round(time.perf_counter() - began, 2)
    summary = (
        f"diffusion on {args.dataset}: {metrics['epochs']} epochs, {metrics['steps']} steps, "
        f"EMA eval loss {metrics['initial_eval_loss']:.4f} -> {metrics['final_ema_eval_loss']:.4f}; "
        f"pipeline in {metrics['pipeline_dir']}"
    )
    return _emit(args, metrics, summary)


def _classifier_config(args: argparse.Namespace) -> Any:
    from core.training.classifier import ClassifierTrainConfig

    return ClassifierTrainConfig(
        arch=args.arch,
        arch_options=arch_options(args),
        epochs=args.epochs,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        augment=args.augment,
        horizontal_flip=args.flip,
        label_smoothing=args.label_smoothing,
        **_options(args, ("batch_size", "lr")),
    )


def _train_classifier_rank(*, args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    """One rank of ``cdp train classifier`` (all of it with ``--nproc 1``)."""
    from core.training.classifier import train_classifier

    root, device = _resolve(args)
    train, val = _load(args, "train", root), _load(args, "val", root)
    return train_classifier(train, val, config=_classifier_config(args), out_dir=args.out, seed=args.seed,
                            device=device, progress=progress)  # fmt: skip


def run_classifier(args: argparse.Namespace) -> int:
    from core.models import load_classifier
    from core.training.classifier import evaluate_accuracy

    _classifier_config(args)  # bad options fail here, before any process starts
    root, device = _resolve(args)
    began = time.perf_counter()
    metrics = run_on_ranks(_train_classifier_rank, args, device)
    if metrics is None:  # a torchrun rank other than 0
        return 0
    test = evaluate_accuracy(
        load_classifier(args.out, device=device), _load(args, "test", root), device=device
    )
    metrics["test_accuracy"] = test["accuracy"]
    metrics["wall_seconds"] = round(time.perf_counter() - began, 2)
    summary = (
        f"classifier on {args.dataset}: best epoch {metrics['best_epoch']}, validation accuracy "
        f"{metrics['best_val_accuracy']:.4f}, test accuracy {test['accuracy']:.4f}; "
        f"model in {metrics['model_dir']}"
    )
    return _emit(args, metrics, summary)
