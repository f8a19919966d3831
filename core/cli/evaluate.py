"""``cdp evaluate``: clean, PGD-CE, PGD-CW (and optionally AutoAttack) accuracy of a saved classifier.

A classifier directory (``model.safetensors`` + ``config.json``, as ``cdp train classifier|trades`` write) is
attacked on a dataset split at an L-inf radius in [0, 1] pixel units. The gradient-masking sanity checks run
on the first batch; their warnings are printed on stderr and listed under ``warnings`` in the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from core import options
from core.cli.common import ProgressBar, integer, parse_eps, resolve_data_root_and_device
from core.training.attacks import ATTACK_TABLE, Attack


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="robust accuracy of a classifier (PGD-CE, PGD-CW, optional AutoAttack)",
        description=(
            "Clean accuracy and L-inf robust accuracy of a saved classifier: PGD with the cross-entropy and "
            "the Carlini-Wagner margin (random start, restarts), optionally AutoAttack standard (needs the "
            "'autoattack' extra), and the per-sample worst case over all of them."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="classifier directory (model.safetensors + config.json)")
    parser.add_argument("--dataset", required=True, help=", ".join(options.DATASET_NAMES))
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default: CDP_DATA_ROOT)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--eps", type=parse_eps, required=True, help="L-inf radius in [0, 1], e.g. 8/255")
    parser.add_argument("--steps", type=integer(1), default=20, help="PGD steps")
    parser.add_argument("--step-size", type=parse_eps, default=None, help="default 2.5 eps / steps")
    parser.add_argument("--restarts", type=integer(1), default=1, help="PGD random restarts")
    parser.add_argument("--autoattack", action="store_true", help="also run AutoAttack standard")
    parser.add_argument("--limit", type=integer(1), default=None,
                        help="evaluate N images only, spread evenly over the classes")
    parser.add_argument("--batch-size", type=integer(1), default=256)
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: CDP_DEVICE)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(func=run)


def _row_name(attack: Attack, steps: int) -> str:
    """An attack's line in the printed table: "PGD-20 CE", "AutoAttack standard" (the version this runs)."""
    if attack.method == "pgd" and attack.loss is not None:
        return f"PGD-{steps} {attack.loss.upper()}"
    return f"{attack.label} standard" if attack.method == "autoattack" else attack.label


def run(args: argparse.Namespace) -> int:
    from core.data import load_dataset
    from core.models import load_classifier
    from core.training.common import resolve_device
    from core.training.masking_checks import GradientMaskingWarning
    from core.training.robustness import evaluate_robustness

    root, device_name = resolve_data_root_and_device(args)
    device = resolve_device(device_name)
    model = load_classifier(args.model, device=device)
    data = load_dataset(args.dataset, args.split, root=root)
    if args.limit is not None:
        data = data.subset(data.limit_index(args.limit))
    if model.num_classes != data.info.num_classes or getattr(model, "channels", data.info.channels) != (
        data.info.channels
    ):
        raise ValueError(
            f"classifier {args.model} ({model.num_classes} classes) does not fit dataset {args.dataset!r} "
            f"({data.info.num_classes} classes, {data.info.channels} channels)"
        )
    bar = ProgressBar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GradientMaskingWarning)  # reported below, once each
            result = evaluate_robustness(
                model, data, eps=args.eps, steps=args.steps, step_size=args.step_size, restarts=args.restarts,
                autoattack=args.autoattack, batch_size=args.batch_size, device=device, seed=args.seed,
                progress=bar,
            )
    except ImportError as exc:
        raise ValueError(str(exc)) from exc
    finally:
        bar.close()
    for message in result["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    result = {"model": str(args.model), "dataset": args.dataset, "split": args.split, **result}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.model} on {args.dataset}/{args.split} ({result['count']} images), L-inf eps {args.eps:.4g}")
    rows = [("clean", result["clean_acc"])]
    rows += [(_row_name(attack, args.steps), result[attack.metric]) for attack in ATTACK_TABLE.values()
             if attack.metric in result]  # fmt: skip
    rows.append(("worst case (robust)", result["robust_acc"]))
    for name, value in rows:
        print(f"  {name:<22} {100 * value:6.2f} %")
    return 0
