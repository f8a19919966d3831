"""``cdp simulate gaussian``: the paper's §3 Gaussian study (Table 1, Tables 7–9) from the command line.

Output goes to stdout as a table, JSON (``{"config": {...}, "rows": [...]}``) or CSV; figure paths and the
progress bar go to stderr so that JSON and CSV stay machine-readable.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.cli.common import integer, number
from core.progress import ProgressEvent
from core.simulation.gaussian import (
    DIRECTIONS,
    optimal_accuracies,
)
from core.simulation.study import GaussianStudy, ResultRow, run_gaussian_study

FORMATS = ("table", "json", "csv")
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def _list_type(item: Callable[[str], Any], what: str) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
        values = []
        for part in parts:
            try:
                values.append(item(part))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"bad item {part!r} in {text!r}: {exc}") from None
        return tuple(values)

    return parse


def _figure_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"expected a file name ending in one of {FIGURE_SUFFIXES}, got {text!r}"
        )
    return path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("simulate", help="simulations of the paper's theory (§3)")
    studies = parser.add_subparsers(dest="study", metavar="STUDY")
    studies.required = True
    g = studies.add_parser(
        "gaussian",
        help="Gaussian mixture study of Proposition 1 (paper §3, Table 1)",
        description=(
            "Self-training (eq. 5) with real data from N(+-mu, sigma^2 I) and synthetic data from "
            "N(+-mu~, sigma^2 I), scored by the closed forms (6)-(7). Defaults are the paper's Table 1, d=2."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g.add_argument("--dim", type=integer(1), default=2, help="dimension d")
    g.add_argument("--mu-norm-sq", type=number(0.0, strict=True), default=2.0, help="|mu|^2")
    g.add_argument("--eps", type=number(0.0), default=0.5, help="l_inf attack radius")
    g.add_argument(
        "--angle",
        type=number(0.0, maximum=180.0),
        default=0.0,
        help="angle in degrees between mu and the all-ones vector (0, 30, 60, 90 in the paper)",
    )
    g.add_argument(
        "--sigma", type=number(0.0, strict=True), default=1.0, help="noise standard deviation"
    )
    g.add_argument(
        "--n-real",
        type=integer(1),
        default=10,
        help="real samples behind every synthetic row (theta_inter)",
    )
    g.add_argument(
        "--real-sizes",
        type=_list_type(integer(1), "integers >= 1"),
        default=(10, 100),
        help="comma-separated sizes n of the real-only rows",
    )
    g.add_argument(
        "--n-syn",
        type=_list_type(integer(0), "integers >= 0"),
        default=(10, 100),
        help="comma-separated numbers of synthetic samples",
    )
    g.add_argument(
        "--c",
        type=_list_type(number(0.0), "numbers >= 0"),
        default=(0.5, 1.0, 1.5),
        help="comma-separated scales c of the synthetic mean",
    )
    g.add_argument(
        "--direction", choices=DIRECTIONS, default="clean", help="synthetic family of Proposition 1"
    )
    g.add_argument("--trials", type=integer(1), default=50, help="independent seeded trials")
    g.add_argument("--seed", type=integer(0), default=0, help="random seed")
    g.add_argument("--format", choices=FORMATS, default="table", help="output format on stdout")
    g.add_argument(
        "--plot",
        type=_figure_path,
        default=None,
        metavar="PATH",
        help="write accuracy / robust accuracy against n_syn to PATH; for d=2 also the Proposition 1 "
        "picture to <stem>_prop1<suffix> next to it",
    )
    g.set_defaults(func=run_gaussian)


def _study_from_args(args: argparse.Namespace) -> GaussianStudy:
    return GaussianStudy(
        dim=args.dim,
        mu_norm_sq=args.mu_norm_sq,
        eps=args.eps,
        angle_deg=args.angle,
        sigma=args.sigma,
        n_real=args.n_real,
        real_sizes=tuple(args.real_sizes),
        n_syn=tuple(args.n_syn),
        c=tuple(args.c),
        direction=args.direction,
        trials=args.trials,
        seed=args.seed,
    )


def format_table(study: GaussianStudy, rows: list[ResultRow]) -> str:
    """A plain-text table with the setting and the population optima in the header."""
    best_clean, best_robust = optimal_accuracies(study.mu, sigma=study.sigma, eps=study.eps)
    lines = [
        f"Gaussian study: d={study.dim}, |mu|^2={study.mu_norm_sq:g}, eps={study.eps:g}, "
        f"angle={study.angle_deg:g} deg, sigma={study.sigma:g}, direction={study.direction}, "
        f"{study.trials} trials, seed {study.seed}",
        f"population optimum over linear classifiers: accuracy {best_clean:.4f}, "
        f"robust accuracy {best_robust:.4f}",
        "",
        f"{'source':<10} {'c':>5} {'n_real':>7} {'n_syn':>7}   {'accuracy (std)':<17} {'robust acc (std)'}",
    ]
    for r in rows:
        c = "-" if r.c is None else f"{r.c:g}"
        n_syn = "-" if r.n_syn is None else str(r.n_syn)
        lines.append(
            f"{r.source:<10} {c:>5} {r.n_real:>7} {n_syn:>7}   "
            f"{r.acc_mean:.4f} ({r.acc_std:.4f})   {r.rob_mean:.4f} ({r.rob_std:.4f})"
        )
    return "\n".join(lines)


def _config(study: GaussianStudy) -> dict[str, Any]:
    config = study.to_dict()
    config["mu"] = study.mu.tolist()
    return config


def run_gaussian(args: argparse.Namespace) -> int:
    study = _study_from_args(args)
    total = study.trials * (max((*study.real_sizes, study.n_real)) + max(study.n_syn))
    with tqdm(
        total=total, desc="simulate", unit="sample", unit_scale=True, file=sys.stderr, delay=1.0, leave=False
    ) as bar:

        def progress(event: ProgressEvent) -> None:
            bar.update(event.current - bar.n)

        rows = run_gaussian_study(study, progress=progress)

    if args.format == "json":
        json.dump({"config": _config(study), "rows": [r.to_dict() for r in rows]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.format == "csv":
        writer = csv.DictWriter(
            sys.stdout, fieldnames=[f.name for f in fields(ResultRow)], lineterminator="\n"
        )
        writer.writeheader()
        for r in rows:
            writer.writerow(r.to_dict())
    else:
        print(format_table(study, rows))
    sys.stdout.flush()

    if args.plot is not None:
        from core.simulation.plots import plot_curves, plot_proposition1  # matplotlib only when asked

        written = [plot_curves(rows, study, args.plot)]
        if study.dim == 2:
            written.append(
                plot_proposition1(study, args.plot.with_name(f"{args.plot.stem}_prop1{args.plot.suffix}"))
            )
        for path in written:
            print(f"figure: {path}", file=sys.stderr)
    return 0
