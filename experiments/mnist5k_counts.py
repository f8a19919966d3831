"""The MNIST-5k sample-efficiency study (docs/RESULTS.md): is one Contrastive-DP image worth more than one
vanilla DDIM image when synthetic images are few?

The paper's claim is about efficiency: guided samples should buy the same robust accuracy with fewer images.
This study trains TRADES on the real set R plus N synthetic images, N in :data:`COUNTS`, for each method of
:data:`METHODS`, with everything else fixed by the arms' protocol (``experiments/mnist5k.py``: the same
generator, labeller, judge, TRADES budget, synthetic share 0.3 of every batch, and evaluation: PGD-20 CE, CW
and AutoAttack on all 1000 test images, the per-sample worst over all three). Every method samples 5000
images from the same x_T (seed 2024); the set of N is the first N of them, so the sets are nested and, at
one N, every method starts from the same noise.

Stages (each prints its JSON as the last line of standard output; caches under ``--work``):

    python experiments/mnist5k_counts.py mild                       # choose the mild setting (sample metrics)
    python experiments/mnist5k_counts.py sets                       # the four 5000-image sets
    python experiments/mnist5k_counts.py run --method cdp-mild --count 500 --seed 0
    python experiments/mnist5k_counts.py report --replicate 2       # docs/data/mnist5k-counts.json, figure
    experiments/mnist5k_counts.sh                                   # all of it, most decisive runs first

The mild setting is chosen before any TRADES run, on sample metrics only (:func:`choose_mild`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mnist5k as study  # noqa: E402  (the arms' protocol, generator, labeller, judge and caches)

COUNTS = (500, 1000, 2000, 5000)
DECIDING = (500, 1000)  # the counts whose comparisons decide: 5 seeds; the others 3
SEEDS = {n: (0, 1, 2, 3, 4) if n in DECIDING else (0, 1, 2) for n in COUNTS}
FRACTION = 0.3  # the synthetic share of every TRADES batch (the arms' better vanilla share)
SET_COUNT, SET_SEED = 5000, study.SYNTHETIC_SEED

# The paper's HNM (tau 10, tau+ 0.1, beta 1) at smaller lambdas: the candidates of the mild setting, listed
# before any of them ran. Rule (choose_mild): the largest lambda whose judge label agreement on the sweep's
# noise (500 images, seed 777) stays within 2 points of vanilla's.
PAPER_HNM = {"loss": "hnm", "tau": 10.0, "tau_plus": 0.1, "beta": 1.0}
MILD_CANDIDATES = (1e2, 3e2, 1e3, 3e3, 1e4, 3e4)
MILD_WITHIN = 0.02

REAL_ONLY = "R (3x steps)"  # the arms' real-only run: the reference of every paired difference


def mild_params(work: Path) -> dict[str, Any]:
    return {**PAPER_HNM, "lam": json.loads((work / "counts" / "mild.json").read_text())["lam"]}


def methods(work: Path) -> dict[str, tuple[dict[str, Any], bool]]:
    """Method name -> (generation params, robust feature extractor?)."""
    out: dict[str, tuple[dict[str, Any], bool]] = {
        "vanilla": (dict(study.SWEEP["vanilla"]), False),
        "cdp-paper": (dict(study.SWEEP["paper-hnm"]), False),
    }
    if (work / "counts" / "mild.json").exists():
        out["cdp-mild"] = (mild_params(work), False)
        out["cdp-mild-robust"] = (mild_params(work), True)
    return out


METHODS = ("vanilla", "cdp-paper", "cdp-mild", "cdp-mild-robust")


def robust_extractor(work: Path) -> Path:
    """Features of an adversarially trained model: the real-only TRADES model of seed 0."""
    study.train_arm(work, study.ARMS[REAL_ONLY], 0)
    return work / "runs" / REAL_ONLY / "0" / "final"


def choose_mild(work: Path) -> dict[str, Any]:
    """Sample metrics of vanilla and each candidate on the sweep's noise; the largest lambda within
    MILD_WITHIN of vanilla's judge agreement is the mild setting."""
    out = work / "counts" / "mild.json"
    base = study.sample(
        work, "sweep-vanilla", dict(study.SWEEP["vanilla"]), count=study.SWEEP_COUNT, seed=study.SWEEP_SEED
    )
    rows = {}
    for lam in MILD_CANDIDATES:
        m = study.sample(
            work,
            f"mild-hnm-tau10-{lam:g}",
            {**PAPER_HNM, "lam": lam},
            count=study.SWEEP_COUNT,
            seed=study.SWEEP_SEED,
        )
        rows[f"{lam:g}"] = {
            k: m[k]
            for k in (
                "label_agreement",
                "outlier_fraction",
                "separability_margin",
                "class_entropy_normalized",
                "seconds",
            )
        }
    ok = [
        lam
        for lam in MILD_CANDIDATES
        if rows[f"{lam:g}"]["label_agreement"] >= base["label_agreement"] - MILD_WITHIN
    ]
    if not ok:
        raise SystemExit("no candidate keeps judge agreement within 2 points of vanilla's")
    result = {
        "stage": "mild",
        "lam": max(ok),
        "rule": f"largest lambda with judge agreement >= vanilla - {MILD_WITHIN}",
        "vanilla": {k: base[k] for k in ("label_agreement", "outlier_fraction", "separability_margin")},
        "candidates": rows,
        "params": {**PAPER_HNM, "lam": max(ok)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def full_set(work: Path, method: str) -> Path:
    """The method's 5000 images (cached as sets/count-<method>/shards/0.npz); returns the npz path."""
    params, robust = methods(work)[method]
    study.sample(
        work,
        f"count-{method}",
        params,
        count=SET_COUNT,
        seed=SET_SEED,
        feature_extractor=robust_extractor(work) if robust else None,
    )
    return work / "sets" / f"count-{method}" / "shards" / "0.npz"


def prefix_set(work: Path, method: str, count: int) -> Path:
    """A shards folder holding the first ``count`` images of the method's set."""
    import numpy as np

    folder = work / "sets" / f"count-{method}-N{count}" / "shards"
    target = folder / "0.npz"
    if not target.exists():
        with np.load(full_set(work, method)) as npz:
            arrays = {k: npz[k][:count] for k in npz.files}
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "0.tmp.npz", **arrays)
        (folder / "0.tmp.npz").rename(target)
    return folder


def run_dir(work: Path, method: str, count: int, seed: int) -> Path:
    return work / "counts" / method / f"N{count}" / str(seed)


def command(method: str, count: int, seed: int) -> str:
    return f"python experiments/mnist5k_counts.py run --method {method} --count {count} --seed {seed}"


def run(work: Path, method: str, count: int, seed: int) -> dict[str, Any]:
    """TRADES on R + the first ``count`` images of ``method`` (share FRACTION), then the test evaluation."""
    from core.jobs.training import train_for_spec

    out = run_dir(work, method, count, seed)
    done = out / "metrics.json"
    if not done.exists():
        arm = study.Arm(f"{method}@N{count}", synthetic=method, fraction=FRACTION, epochs_scale=3)
        spec = study.trades_spec(arm, seed, count)
        shards = prefix_set(work, method, count)
        began = time.perf_counter()
        metrics = train_for_spec(
            spec, out_dir=out, data_root=work, device="cpu", progress=lambda _e: None, synthetic_dirs=[shards]
        )
        metrics["wall_s"] = round(time.perf_counter() - began, 1)
        done.write_text(json.dumps(metrics, default=str))
    metrics = json.loads(done.read_text())
    cached = out / study.EVALUATION_FILE
    if not cached.exists():
        cached.write_text(
            json.dumps(study.evaluate_model(out / "final", split="test", autoattack=True, seed=seed))
        )
    final = json.loads(cached.read_text())
    return {
        "stage": "run",
        "method": method,
        "count": count,
        "seed": seed,
        "command": command(method, count, seed),
        **{
            k: final[k] for k in ("clean", "pgd_ce", "pgd_cw", "autoattack", "worst", "count") if k != "count"
        },
        "test_images": final["count"],
        "broken_by_autoattack_only": final.get("broken_by_autoattack_only"),
        "synthetic_share_seen": metrics.get("synthetic_share"),
        "train_seconds": metrics.get("train_seconds"),
    }


# ------------------------------------------------------------------------------------------------ report

METRIC_KEYS = {
    "clean": "clean_acc",
    "pgd_ce": "pgd_ce_acc",
    "pgd_cw": "pgd_cw_acc",
    "autoattack": "autoattack_acc",
    "worst": "worst_acc",
}


def _arm(method: str, count: int) -> str:
    return f"{method} N={count}"


def collect(work: Path, replicate: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every finished run under ``work`` (the real-only reference included) in core.experiment_report's run
    format, labelled ``replicate``, and the plan's runs not finished there."""
    runs, missing = [], []
    for seed in SEEDS[DECIDING[0]]:
        folder = work / "runs" / REAL_ONLY / str(seed)
        if (folder / study.EVALUATION_FILE).exists():
            r = study.run(work, REAL_ONLY, seed)
            runs.append(
                {
                    "arm": "real only",
                    "seed": seed,
                    "replicate": replicate,
                    "command": r["command"],
                    "metrics": {METRIC_KEYS[k]: r[k] for k in METRIC_KEYS},
                }
            )
        else:
            missing.append(f"real only seed {seed}")
    for method in METHODS:
        for count in COUNTS:
            for seed in SEEDS[count]:
                if (run_dir(work, method, count, seed) / study.EVALUATION_FILE).exists():
                    r = run(work, method, count, seed)
                    runs.append(
                        {
                            "arm": _arm(method, count),
                            "seed": seed,
                            "replicate": replicate,
                            "command": r["command"],
                            "metrics": {METRIC_KEYS[k]: r[k] for k in METRIC_KEYS},
                            "broken_by_autoattack_only": r["broken_by_autoattack_only"],
                        }
                    )
                else:
                    missing.append(f"{_arm(method, count)} seed {seed}")
    return runs, missing


ARM_ORDER = ["real only"] + [_arm(m, n) for m in METHODS for n in COUNTS]


def replicate_of(row: dict[str, Any]) -> str:
    """The replicate a run belongs to: one training of the generator on one machine (rows recorded before
    replicates were named belong to "1")."""
    return str(row.get("replicate", "1"))


def keep_recorded(runs: list[dict[str, Any]], out_json: Path) -> list[dict[str, Any]]:
    """The runs under the work directory plus every run recorded in ``out_json`` that is not among them (the
    same arm, seed and replicate): the rows of other replicates, and those of this one whose cache is gone.
    Recorded rows keep their labels; a finished run replaces its recorded row."""
    have = {(r["arm"], r["seed"], replicate_of(r)) for r in runs}
    kept = list(runs)
    if out_json.exists():
        for row in json.loads(out_json.read_text()).get("runs", []):
            if (row["arm"], row["seed"], replicate_of(row)) not in have:
                kept.append({**row, "replicate": replicate_of(row)})
    order = {name: i for i, name in enumerate(ARM_ORDER)}
    kept.sort(key=lambda r: (replicate_of(r), order.get(r["arm"], len(order)), r["seed"]))
    return kept


def paired(
    runs: list[dict[str, Any]], arm: str, ref: str, metric: str = "worst_acc"
) -> dict[str, Any] | None:
    """``arm`` - ``ref`` on ``metric``, paired by seed *within* each replicate (a pair never spans two
    trainings of the generator or two machines), with the 95 % paired-t interval over all pairs and per
    replicate; None without a pair."""
    from core.experiment_report.statistics import describe

    value = {(r["arm"], replicate_of(r), r["seed"]): r["metrics"].get(metric) for r in runs}
    pairs = sorted(
        (rep, seed, v - value[(ref, rep, seed)])
        for (name, rep, seed), v in value.items()
        if name == arm and v is not None and value.get((ref, rep, seed)) is not None
    )
    if not pairs:
        return None
    by_rep: dict[str, list[float]] = {}
    for rep, _seed, d in pairs:
        by_rep.setdefault(rep, []).append(d)
    return {
        **describe([d for _r, _s, d in pairs]),
        "pairs": [{"replicate": rep, "seed": seed, "difference": d} for rep, seed, d in pairs],
        "by_replicate": {rep: describe(ds) for rep, ds in sorted(by_rep.items())},
    }


def arm_summary(runs: list[dict[str, Any]], arm: str) -> dict[str, Any]:
    """Per metric: mean and 95 % t interval over every run of ``arm`` (all replicates), and per replicate."""
    from core.experiment_report.statistics import describe

    mine = [r for r in runs if r["arm"] == arm]
    out: dict[str, Any] = {}
    for metric in METRIC_KEYS.values():
        values = [(replicate_of(r), r["seed"], r["metrics"][metric]) for r in mine if r["metrics"].get(metric)
                  is not None]
        if not values:
            continue
        reps = sorted({rep for rep, _s, _v in values})
        out[metric] = {
            **describe([v for _r, _s, v in values]),
            "values": [v for _r, _s, v in values],
            "runs": [f"{rep}/{seed}" for rep, seed, _v in values],
            "by_replicate": {rep: describe([v for r, _s, v in values if r == rep]) for rep in reps},
        }
    return out


def comparisons_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparisons that decide: each guided method against vanilla at N and at 2N, and every arm
    against real only; worst case and clean accuracy, paired within replicates."""
    wanted = []
    for method in METHODS[1:]:
        for count in COUNTS:
            wanted.append((_arm(method, count), _arm("vanilla", count)))
            wanted.append((_arm(method, count), _arm("vanilla", 2 * count)))
    wanted += [(a, "real only") for a in ARM_ORDER[1:]]
    out = {}
    for arm, ref in wanted:
        worst = paired(runs, arm, ref, "worst_acc")
        if worst is not None:
            out[f"{arm} - {ref}"] = {"arm": arm, "reference": ref, "worst_acc": worst,
                                     "clean_acc": paired(runs, arm, ref, "clean_acc")}
    return out


def set_metrics(work: Path) -> dict[str, Any]:
    """Each method's 5000-image set: its sample metrics and the warnings a generation job would give."""
    from core.quality import sample_warnings

    sets = {}
    for method in METHODS:
        path = work / "sets" / f"count-{method}" / "metrics.json"
        if path.exists():
            m = json.loads(path.read_text())
            sets[method] = {"warnings": sample_warnings(m, num_classes=10)} | {
                k: m.get(k)
                for k in (
                    "params",
                    "label_agreement",
                    "outlier_fraction",
                    "separability_margin",
                    "class_entropy_normalized",
                    "near_duplicate_fraction",
                    "condition_agreement",
                    "seconds",
                )
            }
    return sets


def report(work: Path, out_json: Path, img: Path, replicate: str) -> dict[str, Any]:
    """docs/data/mnist5k-counts.json (runs, per-arm intervals, the paired comparisons that decide) and the
    count-curve figure, from the runs finished under ``work`` (labelled ``replicate``) and every recorded
    run of the other replicates; the plan's (arm, seed) cells without a run in any replicate are listed."""
    found, _missing_here = collect(work, replicate)
    runs = keep_recorded(found, out_json)
    if not any(r["arm"] == "real only" for r in runs):
        raise SystemExit("no finished real-only run yet: nothing to report")
    have = {(r["arm"], r["seed"]) for r in runs}
    missing = [f"{_arm(m, n)} seed {s}" for m in METHODS for n in COUNTS for s in SEEDS[n]
               if (_arm(m, n), s) not in have]
    missing = [f"real only seed {s}" for s in SEEDS[DECIDING[0]] if ("real only", s) not in have] + missing
    previous = json.loads(out_json.read_text()) if out_json.exists() else {}
    mild = previous.get("mild", {})
    if not isinstance(mild, dict) or "lam" in mild:  # recorded before replicates were named: replicate 1's
        mild = {"1": mild} if mild else {}
    sets = previous.get("sets", {})
    if sets and set(sets) <= set(METHODS):
        sets = {"1": sets}
    if (work / "counts" / "mild.json").exists():
        mild[replicate] = json.loads((work / "counts" / "mild.json").read_text())
    here = set_metrics(work)
    if here:
        sets[replicate] = here
    replicates = sorted({replicate_of(r) for r in runs})
    result = {
        "dataset": study.DATASET,
        "protocol": study.PROTOCOL,
        "fraction": FRACTION,
        "counts": list(COUNTS),
        "seeds": {str(n): list(s) for n, s in SEEDS.items()},
        "set": {"count": SET_COUNT, "seed": SET_SEED, "nested": True},
        "replicates": {rep: sum(replicate_of(r) == rep for r in runs) for rep in replicates},
        "mild": mild,
        "sets": sets,
        "runs": runs,
        "summary": {arm: arm_summary(runs, arm) for arm in ARM_ORDER if any(r["arm"] == arm for r in runs)},
        "comparisons": comparisons_of(runs),
        "missing": missing,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    figure(result, img / "mnist5k-counts.png")
    return {
        "stage": "report",
        "json": str(out_json),
        "runs": len(runs),
        "replicates": result["replicates"],
        "missing": len(missing),
        "worst": {a: round(100 * s["worst_acc"]["mean"], 2) for a, s in result["summary"].items()
                  if "worst_acc" in s},
    }


def figure(result: dict[str, Any], out: Path) -> None:
    """Worst-case robust accuracy against the number of synthetic images, one line per method (mean and 95 %
    interval over every run), each run's point (one marker per replicate); real only as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = result["summary"]
    markers = dict(zip(sorted(result["replicates"]), "o^sDv", strict=False))
    fig, ax = plt.subplots(figsize=(8, 4.4))
    real = arms["real only"]["worst_acc"]
    ax.axhline(100 * real["mean"], color="black", lw=1, label=f"real only (n={real['n']})")
    if real["ci95"]:
        ax.axhspan(100 * real["ci95"][0], 100 * real["ci95"][1], color="black", alpha=0.08)
    for k, method in enumerate(METHODS):
        xs, means, lo, hi = [], [], [], []
        for count in COUNTS:
            s = arms.get(_arm(method, count), {}).get("worst_acc")
            if not s:
                continue
            x = count * (1 + 0.04 * (k - 1.5))
            xs.append(x)
            means.append(100 * s["mean"])
            lo.append(100 * (s["mean"] - s["ci95"][0]) if s["ci95"] else 0.0)
            hi.append(100 * (s["ci95"][1] - s["mean"]) if s["ci95"] else 0.0)
            for rep, marker in markers.items():
                ys = [v for v, name in zip(s["values"], s["runs"], strict=True) if name.split("/")[0] == rep]
                ax.scatter([x] * len(ys), 100 * np.asarray(ys), s=10, color=f"C{k}", alpha=0.5, marker=marker)
        if xs:
            ax.errorbar(xs, means, yerr=[lo, hi], fmt="-o", capsize=3, color=f"C{k}", label=method)
    for rep, marker in markers.items():
        ax.scatter([], [], color="grey", marker=marker, s=10, label=f"a run of replicate {rep}")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(list(COUNTS), [str(n) for n in COUNTS])
    ax.set_xlabel("synthetic images N (first N of one 5000-image set per method; share 0.3 of each batch)")
    ax.set_ylabel("test worst-case accuracy (%)")
    ax.set_title(
        "MNIST-5k 16x16, TRADES eps 0.15: worst of PGD-20 CE / CW / AutoAttack, 1000 test images", fontsize=9
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, default=study.ROOT / "var" / "mnist5k", help="cache of every stage"
    )
    sub = parser.add_subparsers(dest="stage", required=True)
    sub.add_parser("mild", help="choose the mild Contrastive-DP setting on sample metrics")
    sub.add_parser("sets", help="each method's 5000-image set from one x_T")
    p_run = sub.add_parser("run", help="one (method, N, seed): TRADES, then the test evaluation")
    p_run.add_argument("--method", required=True, choices=METHODS)
    p_run.add_argument("--count", type=int, required=True, choices=COUNTS)
    p_run.add_argument("--seed", type=int, required=True)
    p_rep = sub.add_parser("report", help="docs/data/mnist5k-counts.json and the figure from finished runs")
    p_rep.add_argument("--json", type=Path, default=study.ROOT / "docs" / "data" / "mnist5k-counts.json")
    p_rep.add_argument("--img", type=Path, default=study.ROOT / "docs" / "img")
    p_rep.add_argument(
        "--replicate",
        required=True,
        help="the label of the runs under --work: one training of the generator on one machine (the recorded "
        "rows keep theirs; a new work directory or machine is a new replicate)",
    )
    args = parser.parse_args(argv)
    study._torch_setup()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "mild":
        study.emit(choose_mild(args.work))
    elif args.stage == "sets":
        rows = {}
        for method in METHODS:
            full_set(args.work, method)
            m = json.loads((args.work / "sets" / f"count-{method}" / "metrics.json").read_text())
            rows[method] = {
                k: m[k] for k in ("label_agreement", "outlier_fraction", "separability_margin", "seconds")
            }
        study.emit({"stage": "sets", "sets": rows})
    elif args.stage == "run":
        if args.seed not in SEEDS[args.count]:
            parser.error(f"--seed {args.seed} is not in the plan for N={args.count}: {SEEDS[args.count]}")
        study.emit(run(args.work, args.method, args.count, args.seed))
    elif args.stage == "report":
        study.emit(report(args.work, args.json, args.img, args.replicate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
