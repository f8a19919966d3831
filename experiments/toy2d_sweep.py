"""Regenerate the numbers and figures of docs/guidance-2d.md (single-threaded; about 15 minutes on a CPU).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/toy2d_sweep.py [--seeds 5] [--out docs]

Experiment 1 (geometry, n = 512, trained MLP eps-model, one model per seed shared by all settings):
vanilla vs guided metrics for each loss / strategy / lambda and a few other knobs.
Experiment 2 (does it help the eq.-5 estimator?, n = 32 synthetic samples, exact denoiser, 20 seeds):
paired differences guided - vanilla of the closed-form accuracy and robust accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core.simulation.toy2d import GuidanceSettings, Toy2DConfig, build_eps_model, run_toy2d
from core.simulation.toy2d_plots import plot_toy2d_grid

log = logging.getLogger("toy2d_sweep")

G = GuidanceSettings

EXP1: list[tuple[str, dict, GuidanceSettings]] = [
    *[(f"hnm previous lam={lam:g}", {}, G(loss="hnm", lam=lam)) for lam in (30, 100, 300, 1000)],
    *[(f"infonce previous lam={lam:g}", {}, G(loss="infonce", lam=lam)) for lam in (30, 100, 300, 1000)],
    *[(f"hnm real_positive lam={lam:g}", {}, G(strategy="real_positive", lam=lam)) for lam in (100, 1000)],
    *[(f"hnm real_negative lam={lam:g}", {}, G(strategy="real_negative", lam=lam)) for lam in (100, 1000)],
    *[
        (f"hnm class_cond (pseudo) lam={lam:g}", {}, G(strategy="class_conditional", lam=lam))
        for lam in (100, 1000)
    ],
    *[
        (
            f"hnm class_cond (oracle) lam={lam:g}",
            {"labels": "oracle"},
            G(strategy="class_conditional", lam=lam),
        )
        for lam in (100, 1000)
    ],
    *[
        (
            f"infonce class_cond (oracle) lam={lam:g}",
            {"labels": "oracle"},
            G(loss="infonce", strategy="class_conditional", lam=lam),
        )
        for lam in (100, 1000)
    ],
    *[(f"hnm+head previous lam={lam:g}", {}, G(lam=lam, embedding_head=True)) for lam in (100, 1000)],
    ("hnm previous lam=1000 window (0,400)", {}, G(lam=1000, window=(0, 400))),
    ("hnm previous lam=1000 window (400,999)", {}, G(lam=1000, window=(400, 999))),
    *[(f"hnm previous x0_hat lam={lam:g}", {}, G(lam=lam, feature_on="x0_hat")) for lam in (100, 1000)],
    *[(f"hnm previous tau={tau:g} lam=300", {}, G(lam=300, tau=tau)) for tau in (0.1, 2.0)],
    ("hnm previous beta=0 lam=300", {}, G(lam=300, beta=0.0)),
    *[
        (f"hnm previous identity-features lam={lam:g}", {"features": "identity"}, G(lam=lam))
        for lam in (100, 1000)
    ],
    ("vanilla init N(0,4I)", {"init_scale": 2.0}, G(loss="none")),
    ("hnm previous init N(0,4I) lam=300", {"init_scale": 2.0}, G(lam=300)),
    (
        "hnm class_cond (oracle) init N(0,4I) lam=300",
        {"init_scale": 2.0, "labels": "oracle"},
        G(strategy="class_conditional", lam=300),
    ),
]

EXP2: list[tuple[str, dict, GuidanceSettings]] = [
    *[(f"hnm previous lam={lam:g}", {}, G(lam=lam)) for lam in (10, 30, 100)],
    *[(f"infonce previous lam={lam:g}", {}, G(loss="infonce", lam=lam)) for lam in (10, 30, 100)],
    *[
        (f"hnm class_cond (pseudo) lam={lam:g}", {}, G(strategy="class_conditional", lam=lam))
        for lam in (10, 30)
    ],
    *[
        (
            f"hnm class_cond (oracle) lam={lam:g}",
            {"labels": "oracle"},
            G(strategy="class_conditional", lam=lam),
        )
        for lam in (10, 30, 100)
    ],
    *[(f"hnm real_positive lam={lam:g}", {}, G(strategy="real_positive", lam=lam)) for lam in (10, 30)],
]

FIGURES: dict[str, tuple[str, ...]] = {
    "lambda": tuple(
        f"{loss} previous lam={lam}" for loss in ("hnm", "infonce") for lam in (30, 100, 300, 1000)
    ),
    "strategies": (
        "hnm previous lam=1000",
        "infonce previous lam=1000",
        "hnm real_positive lam=1000",
        "hnm real_negative lam=1000",
        "hnm class_cond (pseudo) lam=1000",
        "hnm class_cond (oracle) lam=1000",
        "hnm+head previous lam=1000",
    ),
    "init2": (
        "vanilla init N(0,4I)",
        "hnm previous init N(0,4I) lam=300",
        "hnm class_cond (oracle) init N(0,4I) lam=300",
    ),
}

KEYS = (
    "spread",
    "mean_distance",
    "c_hat",
    "separability",
    "batch_contrastive_loss",
    "accuracy",
    "robust_accuracy",
)


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "sem": float(a.std(ddof=1) / np.sqrt(a.size)) if a.size > 1 else 0.0,
    }


def experiment1(seeds: int, out: Path) -> dict:
    base = Toy2DConfig()
    rows: dict[str, dict[str, list[float]]] = {}
    figure_runs: dict[str, list] = {"strategies": [], "lambda": [], "init2": []}
    for seed in range(seeds):
        model = build_eps_model(base, seed=seed)
        for name, cfg_kw, g in EXP1:
            cfg = replace(base, **cfg_kw)
            r = run_toy2d(cfg, g, seed=seed, n=512, model=model)
            for set_name in ("vanilla", "guided") if r.guided is not None else ("vanilla",):
                for k in KEYS:
                    if k in r.metrics[set_name]:
                        rows.setdefault(f"{name}|{set_name}", {}).setdefault(k, []).append(
                            r.metrics[set_name][k]
                        )
            for fig_name, members in FIGURES.items():
                if seed == 0 and name in members:
                    figure_runs[fig_name].append(r)
            log.info("seed %d %s done", seed, name)
    img = out / "img"
    plot_toy2d_grid(figure_runs["lambda"], img / "toy2d-lambda.png", columns=5)
    plot_toy2d_grid(figure_runs["strategies"], img / "toy2d-strategies.png", columns=4)
    plot_toy2d_grid(figure_runs["init2"], img / "toy2d-init2.png", columns=3)
    return {key: {k: stats(v) for k, v in metrics.items()} for key, metrics in rows.items()}


def experiment2(seeds: int) -> dict:
    base = Toy2DConfig(model="exact")
    model = build_eps_model(base, seed=0)
    table: dict[str, dict] = {}
    for name, cfg_kw, g in EXP2:
        cfg = replace(base, **cfg_kw)
        diffs: dict[str, list[float]] = {"accuracy": [], "robust_accuracy": [], "c_hat": [], "spread": []}
        van: dict[str, list[float]] = {k: [] for k in diffs}
        for seed in range(seeds):
            r = run_toy2d(cfg, g, seed=1000 + seed, n=32, model=model)
            for k in diffs:
                diffs[k].append(r.metrics["guided"][k] - r.metrics["vanilla"][k])
                van[k].append(r.metrics["vanilla"][k])
        table[name] = {
            "diff": {k: stats(v) for k, v in diffs.items()},
            "vanilla": {k: stats(v) for k, v in van.items()},
            "wins_accuracy": int(sum(d > 0 for d in diffs["accuracy"])),
            "wins_robust": int(sum(d > 0 for d in diffs["robust_accuracy"])),
            "seeds": seeds,
        }
        log.info("exp2 %s done", name)
    return table


def reference_prop1(seeds: int) -> dict:
    """What Proposition 1 promises here: eq.-5 accuracy with n~ = 32 samples drawn from 0.5 N(+-c mu, I)."""
    from core.simulation.gaussian import sample_mixture
    from core.simulation.toy2d import set_metrics

    cfg = Toy2DConfig(model="exact")
    mu = np.asarray(cfg.mu)
    out = {}
    for c in (0.5, 1.0, 1.5, 2.0, 3.0):
        acc, rob = [], []
        for seed in range(seeds):
            rng = np.random.default_rng(5000 + seed)
            reals = [sample_mixture(mu, cfg.n_real, rng=rng) for _ in range(cfg.real_trials)]
            x, _ = sample_mixture(c * mu, 32, rng=rng)
            m = set_metrics(x, cfg, real_sets=reals)
            acc.append(m["accuracy"])
            rob.append(m["robust_accuracy"])
        out[f"c={c:g}"] = {"accuracy": stats(acc), "robust_accuracy": stats(rob)}
    return out


def class_conditional_figure(out: Path) -> None:
    """Class-conditional HNM (pseudo-labels) over lambda, seed 0, same x_T: docs/img/toy2d-classcond.png."""
    base = Toy2DConfig()
    model = build_eps_model(base, seed=0)
    runs = [
        run_toy2d(base, G(strategy="class_conditional", lam=lam), seed=0, n=512, model=model)
        for lam in (10, 30, 100, 300, 1000)
    ]
    plot_toy2d_grid(runs, out / "img" / "toy2d-classcond.png", columns=6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seeds2", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--only", choices=("1", "2", "3", "4"), default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    data_dir = args.out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "2"):
        (data_dir / "toy2d-exp2.json").write_text(json.dumps(experiment2(args.seeds2), indent=1))
    if args.only in (None, "3"):
        (data_dir / "toy2d-prop1.json").write_text(json.dumps(reference_prop1(args.seeds2 * 10), indent=1))
    if args.only in (None, "4"):
        class_conditional_figure(args.out)
    if args.only in (None, "1"):
        (data_dir / "toy2d-exp1.json").write_text(json.dumps(experiment1(args.seeds, args.out), indent=1))


if __name__ == "__main__":
    main()
