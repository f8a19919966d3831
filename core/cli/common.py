"""Pieces the ``cdp`` sub-commands share: argparse value types that name the bad value, a tqdm progress
bar that is a :class:`core.progress.ProgressFn`, and the settings fallbacks for ``--data-root`` and
``--device``."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.progress import ProgressEvent, Stage
from core.settings import get_settings


def parse_eps(text: str) -> float:
    """An L-inf radius in [0, 1] pixel units, as a number or a fraction ("0.1", "8/255")."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            value = float(numerator) / float(denominator)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or fraction like 8/255, got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"eps is in [0, 1] pixel units (8/255 = 0.0314), got {text!r}")
    return value


def number(minimum: float, *, strict: bool = False, maximum: float = math.inf) -> Callable[[str], float]:
    """argparse type: a finite float >= minimum (> with strict) and <= maximum."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        low_ok = value > minimum if strict else value >= minimum
        if not (math.isfinite(value) and low_ok and value <= maximum):
            bound = f"{'>' if strict else '>='} {minimum:g}"
            if maximum < math.inf:
                bound += f" and <= {maximum:g}"
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}")
        return value

    return parse


def integer(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


class ProgressBar:
    """A ProgressFn drawing one tqdm bar per stage on stderr (reset when the stage or its total changes)."""

    def __init__(self, *, disable: bool = False) -> None:
        self.disable = disable
        self.bar: tqdm | None = None
        self.key: tuple[str, int] | None = None

    def __call__(self, event: ProgressEvent, /) -> None:
        if event.stage == Stage.CHECKPOINT:  # the EPOCH event after it says the same
            return
        if event.stage == Stage.EPOCH:  # one line per epoch under the step bar
            if event.metrics and not self.disable:
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in event.metrics.items()}
                tqdm.write(f"epoch {event.current}/{event.total}: {shown}", file=sys.stderr)
            return
        if self.key != (event.stage, event.total):
            self.close()
            self.bar = tqdm(total=event.total, desc=str(event.stage), file=sys.stderr, disable=self.disable,
                            leave=False)
            self.key = (event.stage, event.total)
        assert self.bar is not None
        self.bar.update(event.current - self.bar.n)
        if event.message:
            self.bar.set_postfix_str(event.message, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.key = None


def resolve_data_root_and_device(args: argparse.Namespace) -> tuple[Path, str]:
    """``--data-root`` / ``--device``, else the settings (CDP_DATA_ROOT, CDP_DEVICE)."""
    settings = get_settings()
    root = args.data_root if args.data_root is not None else settings.data_root
    return root, args.device if args.device is not None else settings.device


def add_nproc_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=integer(1), default=1, metavar="N",
                        help="data-parallel processes on this host (torch.distributed: gloo on the CPU, NCCL "
                             "on GPUs cuda:K..K+N-1); under torchrun leave it at 1")  # fmt: skip


def run_on_ranks(target: Callable[..., Any], args: argparse.Namespace, device: Any) -> Any:
    """``target(args=args, progress=...)`` on ``args.nproc`` ranks (``core.training.distributed.launch``), or
    on the rank torchrun started this process as; rank 0's result, ``None`` on the other torchrun ranks.
    ``target`` must be a module-level function (child ranks import it); rank 0 draws the progress bar."""
    from core.training.common import resolve_device
    from core.training.distributed import is_main, launch, process_group_from_environment

    device = resolve_device(device)
    bar = ProgressBar()
    try:
        with process_group_from_environment(device) as under_torchrun:
            if under_torchrun:
                if args.nproc != 1:
                    raise ValueError("--nproc does not apply under torchrun (use its --nproc-per-node)")
                result = target(args=args, progress=bar if is_main() else None)
                return result if is_main() else None
            return launch(target, {"args": args}, nproc=args.nproc, device=device, progress=bar)
    finally:
        bar.close()
