"""The ``cdp`` command line.

Each sub-command lives in its own module under ``core/cli/`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed namespace, returns an exit code). Add a module's name to
``COMMAND_MODULES`` to make it part of ``cdp``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules under core.cli that register sub-commands, in the order `cdp --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "simulate", "config", "keys", "toy2d", "up", "demo", "experiment", "wait", "evaluate", "train",
    "generate", "convert", "download",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdp",
        description="Contrastive-DP: contrastive-guided diffusion for adversarial training.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"core.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:  # bad input found after parsing: one clear line, exit 2 like argparse
        parser.exit(2, f"cdp: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, "cdp: interrupted\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
