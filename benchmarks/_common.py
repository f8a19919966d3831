"""What the benchmarks beside this file share: for the timing ones the clock, the timed call, the options
every one of them takes (``--seed --threads --clock --device --json``), the ``--shapes`` selection, the
printed table and the JSON report; for the service ones (fan-out, recovery) the tiny untrained models
they serve.

The scripts run as files (``python benchmarks/NAME.py``), so Python puts this folder on ``sys.path`` and they
import it as ``_common``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, so that the service benchmarks, whose own process never runs a model,
# do not load it just to import this module.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock: Callable[[], float] = time.perf_counter


def set_clock(kind: str, device: torch.device) -> str:
    """``auto``: process CPU time on a CPU (robust to other load on a shared machine), wall time on CUDA."""
    global _clock
    if kind == "auto":
        kind = "wall" if device.type == "cuda" else "cpu"
    _clock = CLOCKS[kind]
    return kind


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, calls: int = 1) -> float:
    """Seconds per call of ``fn`` over ``calls`` back-to-back calls, on the clock :func:`set_clock` chose;
    on CUDA the device is synchronised before the first call and after the last."""
    synchronize(device)
    start = _clock()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (_clock() - start) / calls


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every timing benchmark ends with: ``--seed --threads --clock --device --json``."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                        help="cpu: process CPU time (auto on a CPU); wall: elapsed time (auto on CUDA)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def start_run(args: argparse.Namespace) -> torch.device:
    """Applies ``--threads`` and ``--clock`` (``args.clock`` becomes the clock chosen); returns the device."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.clock = set_clock(args.clock, device)
    return device


def selected_shapes(
    parser: argparse.ArgumentParser, args: argparse.Namespace, shapes: Mapping[str, dict[str, Any]],
    overrides: Mapping[str, str],
) -> list[tuple[str, dict[str, Any]]]:
    """The shapes named by ``--shapes`` (comma-separated), each a copy of its spec in which every key of
    ``overrides`` takes the value of the option it names (``{"batch": "batch"}``) when that option was given.
    Unknown or no names end the program through ``parser.error``."""
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = set(names) - set(shapes)
    if unknown or not names:
        parser.error(f"unknown shape(s) {sorted(unknown)}; expected some of {sorted(shapes)}")
    selected = []
    for name in names:
        spec = dict(shapes[name])
        for key, option in overrides.items():
            if getattr(args, option) is not None:
                spec[key] = getattr(args, option)
        selected.append((name, spec))
    return selected


def write_report(path: Path, benchmark: str, args: argparse.Namespace, rows: list[dict[str, Any]],
                 **extra: Any) -> None:
    """``{"benchmark": ..., **extra, "args": {option: str(value)}, "rows": rows}`` as indented JSON."""
    options = {k: str(v) for k, v in vars(args).items()}
    report = {"benchmark": benchmark, **extra, "args": options, "rows": rows}
    path.write_text(json.dumps(report, indent=2) + "\n")


def print_table(columns: list[tuple[str, str, str]], rows: list[dict[str, Any]]) -> None:
    """Prints a header of the titles, then one line per row; ``columns`` are ``(title, key of the row, format
    spec)``, such as ``("ours ms/img", "ours_ms_per_image", ">12.2f")``, separated by one space. A title takes
    the alignment and width of its column's spec."""
    print(" ".join(f"{title:{re.match(r'[<>^]?[0-9]*', spec).group(0)}}" for title, _, spec in columns))
    for row in rows:
        print(" ".join(f"{row[key]:{spec}}" for _, key, spec in columns))


def make_tiny_models(model_dir: Path) -> None:
    """A tiny untrained UNet (``unet-t``) and SmallCNN (``cnn-t``) for 16 x 16 x 1 images, saved under
    ``model_dir``, the same weights every time (seed 0): for benchmarks of the service, not of the images."""
    import torch

    from core.models import build_classifier, build_unet, save_classifier, save_diffusion

    torch.manual_seed(0)
    save_diffusion(build_unet("tiny", image_size=16, channels=1), model_dir / "unet-t")
    save_classifier(build_classifier("small_cnn", num_classes=10, channels=1, image_size=16, width=8,
                                     feature_dim=32), model_dir / "cnn-t", config={"benchmark": True})
