"""``cdp convert wrn SRC --out DIR``: a plain WideResNet state dict in the TRADES / RobustBench layout (a
``.pt`` / ``.pth`` / ``.bin`` file read with torch's weights-only loader, or ``.safetensors``) to a classifier
directory of this project (``model.safetensors`` + ``config.json``); see :mod:`core.models.convert`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli.common import integer


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="import models trained elsewhere")
    sub = parser.add_subparsers(dest="convert_kind", metavar="KIND")
    sub.required = True
    wrn = sub.add_parser("wrn", help="a RobustBench-style WideResNet state dict -> a classifier directory")
    wrn.add_argument("source", type=Path, help=".pt / .pth / .bin (weights-only) or .safetensors file")
    wrn.add_argument("--out", type=Path, required=True, help="classifier directory to write")
    wrn.add_argument("--image-size", type=integer(4), default=32)
    wrn.add_argument("--mean", type=_floats, default=None,
                     help="per-channel input mean the original subtracted (default 0: none)")  # fmt: skip
    wrn.add_argument("--std", type=_floats, default=None, help="per-channel input std (default 1: none)")
    wrn.add_argument("--activation", choices=("relu", "silu"), default="relu",
                     help="relu for TRADES / RobustBench WideResNet weights")  # fmt: skip
    wrn.set_defaults(func=run_wrn)


def run_wrn(args: argparse.Namespace) -> int:
    from core.models.convert import import_wrn

    model = import_wrn(args.source, args.out, image_size=args.image_size, mean=args.mean, std=args.std,
                       activation=args.activation)  # fmt: skip
    print(json.dumps({"out": str(args.out), **model.build_config}))
    return 0
