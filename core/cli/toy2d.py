"""``cdp toy2d``: vanilla vs contrastive-guided DDIM on the 2-D Gaussian mixture (paper Fig. 2-4).

Prints, for real data, vanilla samples and guided samples (same x_T), the per-class spread, the distance
between class means, the implied scale c of Proposition 1, a separability margin and the closed-form
accuracy / robust accuracy of the eq.-5 self-training estimator fed with each set. With ``--repeats K`` the
run is repeated for seeds S .. S+K-1 and mean and standard deviation are shown. The table or JSON goes to
stdout; the progress bar and the figure path go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core import options
from core.cli.common import integer, number
from core.simulation.toy2d import GuidanceSettings, Toy2DConfig, Toy2DResult, run_toy2d
from core.simulation.toy2d_plots import plot_toy2d

METRICS = (
    ("spread", "per-class spread"),
    ("mean_distance", "class-mean distance"),
    ("c_hat", "implied c (mu~ = c mu)"),
    ("separability", "separability margin"),
    ("batch_contrastive_loss", "final-batch loss"),
    ("accuracy", "eq.5 accuracy"),
    ("robust_accuracy", "eq.5 robust accuracy"),
)


_CONFIG, _GUIDANCE = Toy2DConfig(), GuidanceSettings()  # the toy's defaults, written in core.simulation.toy2d


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "toy2d",
        help="vanilla vs contrastive-guided DDIM on a 2-D Gaussian mixture",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--loss", choices=options.GEN_LOSSES, default=_GUIDANCE.loss)
    p.add_argument("--strategy", choices=options.STRATEGIES, default=_GUIDANCE.strategy)
    p.add_argument("--lam", type=number(0, strict=False), default=_GUIDANCE.lam, help="guidance scale lambda")
    p.add_argument("--tau", type=number(0, strict=True), default=_GUIDANCE.tau, help="temperature")
    p.add_argument("--tau-plus", type=number(0, strict=False), default=_GUIDANCE.tau_plus,
                   help="HNM tau+, in [0, 1)")
    p.add_argument("--beta", type=number(0, strict=False), default=_GUIDANCE.beta, help="HNM hardness")
    p.add_argument("--window", type=integer(0), nargs=2, metavar=("LO", "HI"), default=None,
                   help="guide only for LO <= t <= HI (default: every step but the first)")
    p.add_argument("--embedding-head", action="store_true", help="train an embedding head online")
    p.add_argument("--feature-on", choices=options.FEATURE_ON, default=_GUIDANCE.feature_on)
    p.add_argument("--features", choices=options.TOY_FEATURES, default=_CONFIG.features,
                   help="feature map f: random Fourier features (kernel) or the identity (angle only)")
    p.add_argument("--labels", choices=options.TOY_LABELS, default=_CONFIG.labels,
                   help="labels for class_conditional: from the eq.-5 labeller or the Bayes rule")
    p.add_argument("--model", choices=options.TOY_MODELS, default=_CONFIG.model,
                   help="trained MLP eps-model, or the exact optimal denoiser of the mixture")
    p.add_argument("--steps", type=integer(2), default=_CONFIG.steps, help="DDIM steps")
    p.add_argument("--init-scale", type=number(0, strict=True), default=_CONFIG.init_scale,
                   help="x_T ~ N(0, s^2 I)")
    p.add_argument("--train-steps", type=integer(1), default=_CONFIG.train_steps, help="MLP training steps")
    p.add_argument("--n-real", type=integer(1), default=_CONFIG.n_real, help="real samples for eq. 5")
    p.add_argument("--seed", type=integer(0), default=0)
    p.add_argument("--repeats", type=integer(1), default=1, help="run seeds SEED .. SEED+K-1 and summarise")
    p.add_argument("--n", type=integer(2), default=512, help="synthetic samples (one guided batch)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--plot", type=Path, default=None, help="write a scatter plot (PNG) of the first seed")
    p.set_defaults(func=run)


def _summary(results: list[Toy2DResult]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in ("data", "vanilla", "guided"):
        if name not in results[0].metrics:
            continue
        keys = results[0].metrics[name].keys()
        out[name] = {}
        for key in keys:
            values = np.array([r.metrics[name][key] for r in results], dtype=np.float64)
            out[name][key] = {"mean": float(values.mean()), "std": float(values.std())}
    return out


def _table(summary: dict[str, dict[str, dict[str, float]]], repeats: int) -> str:
    names = list(summary)
    width = max(len(label) for _, label in METRICS) + 2
    lines = [f"{'metric':<{width}}" + "".join(f"{n:>20}" for n in names)]
    for key, label in METRICS:
        cells = []
        for n in names:
            stat = summary[n].get(key)
            if stat is None:
                cells.append(f"{'-':>20}")
            elif repeats > 1:
                cells.append(f"{stat['mean']:>12.4f} ±{stat['std']:.4f}")
            else:
                cells.append(f"{stat['mean']:>20.4f}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.tau_plus < 1:
        raise ValueError(f"--tau-plus must lie in [0, 1), got {args.tau_plus!r}")
    config = Toy2DConfig(
        model=args.model, steps=args.steps, init_scale=args.init_scale, train_steps=args.train_steps,
        features=args.features, labels=args.labels, n_real=args.n_real,
    )
    guidance = GuidanceSettings(
        loss=args.loss, strategy=args.strategy, lam=args.lam, tau=args.tau, tau_plus=args.tau_plus,
        beta=args.beta, window=tuple(args.window) if args.window else None,
        embedding_head=args.embedding_head, feature_on=args.feature_on,
    )
    results = []
    for k in tqdm(range(args.repeats), desc="toy2d", file=sys.stderr, disable=args.repeats == 1):
        results.append(run_toy2d(config, guidance, seed=args.seed + k, n=args.n))
    summary = _summary(results)
    if args.format == "json":
        payload = {
            "seeds": [r.seed for r in results],
            **{k: v for k, v in results[0].to_dict().items() if k in ("config", "guidance", "n")},
            "summary": summary,
            "runs": [r.metrics for r in results],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(_table(summary, args.repeats))
    sys.stdout.flush()
    if args.plot is not None:
        print(f"figure: {plot_toy2d(results[0], args.plot)}", file=sys.stderr)
    return 0
