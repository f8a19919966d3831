"""``cdp train trades``: TRADES adversarial training on a dataset plus optional synthetic npz files / shards.

``core/cli/train.py`` owns the ``train`` command; its ``trades`` sub-parser is filled by
:func:`add_trades_arguments` and runs :func:`run_trades`. The final metrics go to stdout (one JSON object with
``--json``, else a short summary); the progress bar and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core import options
from core.cli.common import (
    add_nproc_argument,
    integer,
    number,
    parse_eps,
    resolve_data_root_and_device,
    run_on_ranks,
)
from core.models import ARCHS
from core.specs.train import ARCH_OPTIONS, trades_config_options

# The command-line option of each arch option (core.specs.train.ARCH_OPTIONS), as (argparse type, help);
# tests/test_trades_cli.py checks that every arch option has one.
ARCH_OPTION_ARGUMENTS: dict[str, tuple[Any, str]] = {
    "width": (integer(1), "small_cnn width"),
    "feature_dim": (integer(1), "small_cnn feature size"),
    "depth": (integer(10), "wrn depth (6n + 4)"),
    "widen_factor": (integer(1), "wrn widen factor"),
}


def add_arch_arguments(group: argparse._ActionsContainer) -> None:
    """``--arch`` and one option per arch option of ``core.specs.train.ARCH_OPTIONS`` (default: the model's
    own), for ``cdp train classifier`` and ``cdp train trades``."""
    group.add_argument("--arch", choices=ARCHS, default=options.ARCH)
    for name, (kind, text) in ARCH_OPTION_ARGUMENTS.items():
        group.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=text)


def add_trades_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cdp train trades`` (defaults: official TRADES attack, Gowal et al.'s optimiser)."""
    parser.add_argument("--dataset", required=True, help=", ".join(options.DATASET_NAMES))
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default: CDP_DATA_ROOT)")
    parser.add_argument("--epochs", type=integer(1), default=10)
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--out", type=Path, required=True, help="output dir (resumes its checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the final metrics as one JSON object")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: CDP_DEVICE)")
    parser.add_argument("--eps", type=parse_eps, default=options.EPS,
                        help="L-inf radius in [0, 1] pixel units, e.g. 0.1 or 8/255")  # fmt: skip
    parser.add_argument("--limit", type=integer(1), default=None, help="use only the first N training images")
    add_nproc_argument(parser)
    parser.add_argument("--synthetic", type=Path, nargs="+", default=None, metavar="PATH",
                        help="synthetic npz files or shard directories (keys image/label or arr_0/arr_1)")
    trades = parser.add_argument_group("TRADES")
    trades.add_argument("--beta", type=number(0.0), default=options.TRADES_BETA, help="weight of the KL term")
    trades.add_argument("--attack-steps", "--steps", dest="attack_steps", type=integer(0),
                        default=options.ATTACK_STEPS,
                        help="PGD steps of the training attack")  # fmt: skip
    trades.add_argument("--step-size", type=parse_eps, default=options.STEP_SIZE,
                        help=f"PGD step of the training attack (default {options.STEP_SIZE * 255:g}/255, "
                        "whatever --eps: the default of the service's trades jobs)")  # fmt: skip
    trades.add_argument("--start", choices=options.ATTACK_STARTS, default=options.ATTACK_START,
                        help="attack start: x + 0.001 N(0, I) (official) or uniform in the ball")  # fmt: skip
    trades.add_argument("--label-smoothing", type=number(0.0, maximum=0.99), default=0.0)
    mixing = parser.add_argument_group("real + synthetic mixing")
    mixing.add_argument("--mixing", choices=options.MIXINGS, default=options.MIXING,
                        help="batch: a fraction of every batch is synthetic; loss: eq. (3)")  # fmt: skip
    mixing.add_argument("--synthetic-fraction", type=number(0.0, maximum=0.99),
                        default=options.SYNTHETIC_FRACTION)
    mixing.add_argument("--eta", type=number(0.0, strict=True, maximum=1.0), default=options.MIXING_ETA,
                        help="weight of the real data in eq. (3) with --mixing loss")  # fmt: skip
    optim = parser.add_argument_group("optimiser")
    optim.add_argument("--batch-size", type=integer(1), default=128)
    optim.add_argument("--lr", type=number(0.0, strict=True), default=0.1)
    optim.add_argument("--weight-decay", type=number(0.0), default=5e-4)
    optim.add_argument("--schedule", choices=options.TRADES_SCHEDULES, default=options.TRADES_SCHEDULE)
    optim.add_argument("--ema-decay", type=number(0.0, maximum=0.9999), default=0.995, help="0 disables")
    add_arch_arguments(parser.add_argument_group("model"))
    evaluation = parser.add_argument_group("checkpoint selection")
    evaluation.add_argument("--eval-steps", type=integer(0), default=options.EVAL_ATTACK_STEPS,
                            help=f"validation PGD steps (default {options.EVAL_ATTACK_STEPS}: the "
                            "eval_attack_steps default of the service's trades jobs)")  # fmt: skip
    evaluation.add_argument("--eval-max", type=integer(1), default=1024, help="validation images used")


def arch_options(args: argparse.Namespace) -> dict[str, int]:
    """The options of ``--arch`` (``ARCH_OPTIONS[arch]``) that were given; ValueError for another arch's
    option."""
    names = ARCH_OPTIONS[args.arch]
    for other in (name for group in ARCH_OPTIONS.values() for name in group):
        if other not in names and getattr(args, other) is not None:
            raise ValueError(f"--{other.replace('_', '-')} does not apply to --arch {args.arch}")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _trades_config(args: argparse.Namespace) -> Any:
    from core.training.trades import TradesConfig

    spec_options = trades_config_options(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, arch=args.arch,
        arch_options=arch_options(args), beta=args.beta, eps=args.eps, step_size=args.step_size,
        attack_steps=args.attack_steps, eval_attack_steps=args.eval_steps, eval_samples=args.eval_max,
        synthetic_fraction=args.synthetic_fraction, mixing=args.mixing,
    )
    return TradesConfig(**spec_options, weight_decay=args.weight_decay, schedule=args.schedule,
                        start=args.start, ema_decay=args.ema_decay, label_smoothing=args.label_smoothing,
                        eta=args.eta)


def _train_trades_rank(*, args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    """One rank of ``cdp train trades`` (all of it with ``--nproc 1``): load the data, train."""
    from core.data import load_dataset, load_synthetic
    from core.training.trades import train_trades

    root, device = resolve_data_root_and_device(args)
    train = load_dataset(args.dataset, "train", root=root)
    if args.limit is not None:
        train = train.subset(range(min(args.limit, len(train))))
    val = load_dataset(args.dataset, "val", root=root)
    synthetic = None
    if args.synthetic:
        synthetic = load_synthetic(args.synthetic, num_classes=train.info.num_classes)
    return train_trades(train, val, synthetic=synthetic, config=_trades_config(args), out_dir=args.out,
                        seed=args.seed, device=device, progress=progress)  # fmt: skip


def run_trades(args: argparse.Namespace) -> int:
    """Train with TRADES on ``--nproc`` ranks, print the metrics."""
    config = _trades_config(args)  # bad options fail here, before any process starts
    metrics = run_on_ranks(_train_trades_rank, args, resolve_data_root_and_device(args)[1])
    if metrics is None:  # a torchrun rank other than 0
        return 0
    if args.json:
        print(json.dumps(metrics))
    else:
        print(
            f"TRADES on {args.dataset}: best epoch {metrics['best_epoch']}, validation clean "
            f"{metrics['best_val_clean_acc']:.4f}, PGD-{config.eval_steps} {metrics['best_val_pgd_acc']:.4f} "
            f"at eps {config.eps:.4g}; model in {metrics['model_dir']}"
        )
    return 0
