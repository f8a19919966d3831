"""The MNIST-5k study's report and figures (``experiments/mnist5k.py report`` and ``gates``), kept apart from
the stages that train and evaluate: docs/data/mnist5k-study.json, docs/data/mnist5k-gates.json and the
figures in docs/img/, all from the cached runs under ``--work``. Intervals come from the product's statistics
(:mod:`core.experiment_report.statistics`), as the service's experiment reports do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mnist5k import (
    ARMS,
    DATASET,
    EVALUATION_FILE,
    GATE2,
    PROTOCOL,
    SWEEP,
    cdp_config,
    judge,
    run,
)

SEEDS = (0, 1, 2)
REPORT_ARMS = ("R (3x steps)", "R+O (3x steps)", "R+vanilla@0.3", "R+vanilla@0.7", "R+CDP@0.3", "R+CDP@0.7",
               "R+CDP@eq3")
METRICS = ("clean", "pgd_ce", "pgd_cw", "worst", "autoattack")


def interval(values: list[float]) -> dict[str, float | int]:
    """Mean, sample std and the 95 % t-interval *half-width* over seeds (the recorded JSON's shape), from the
    product's own statistics (:func:`core.experiment_report.statistics.describe`); std and half-width are
    NaN with one seed."""
    from core.experiment_report.statistics import describe

    d = describe(values)
    if d["ci95"] is None:
        return {"mean": d["mean"], "std": float("nan"), "ci95": float("nan"), "n": d["n"]}
    lo, hi = d["ci95"]
    return {"mean": d["mean"], "std": d["std"], "ci95": (hi - lo) / 2, "n": d["n"]}


def report(work: Path, out_json: Path, img_dir: Path) -> dict[str, Any]:
    """docs/data/mnist5k-study.json and the figures, from the cached runs (missing runs are listed)."""
    arms, missing = [], []
    for name in REPORT_ARMS:
        runs = []
        for seed in SEEDS:
            folder = work / "runs" / name.replace("/", "_") / str(seed)
            if (folder / EVALUATION_FILE).exists():
                runs.append(run(work, name, seed))
            else:
                missing.append(f"{name} seed {seed}")
        arms.append({"name": name, "synthetic_fraction": ARMS[name].fraction, "runs": [
            {k: r[k] for k in ("seed", "clean", "pgd_ce", "pgd_cw", "worst", "autoattack", "command")}
            | {"best_val_checkpoint": r["best_val_checkpoint"], "val_curve": r["val_curve"]} for r in runs]})
    summary: dict[str, Any] = {}
    by_name = {a["name"]: a for a in arms}
    for arm in arms:
        summary[arm["name"]] = {m: interval([r[m] for r in arm["runs"] if r[m] is not None])
                                for m in METRICS if any(r[m] is not None for r in arm["runs"])}
    paired: dict[str, Any] = {}
    ref = {r["seed"]: r for r in by_name["R+vanilla@0.7"]["runs"]} if "R+vanilla@0.7" in by_name else {}
    for arm in arms:
        for frac in ("0.3", "0.7"):
            base_name = f"R+vanilla@{frac}"
            if not arm["name"].startswith("R+CDP@" + frac) or base_name not in by_name:
                continue
            base = {r["seed"]: r for r in by_name[base_name]["runs"]}
            diffs = {m: [r[m] - base[r["seed"]][m] for r in arm["runs"] if r["seed"] in base
                         and r[m] is not None and base[r["seed"]][m] is not None] for m in ("clean", "worst")}
            paired[f"{arm['name']} - {base_name}"] = {m: interval(d) for m, d in diffs.items() if len(d) > 1}
    del ref
    paired_real: dict[str, Any] = {}  # every arm against real data only, seed by seed
    real = {r["seed"]: r for r in by_name.get("R (3x steps)", {"runs": []})["runs"]}
    for arm in arms:
        if arm["name"] == "R (3x steps)":
            continue
        diffs = {m: [r[m] - real[r["seed"]][m] for r in arm["runs"] if r["seed"] in real
                     and r[m] is not None and real[r["seed"]][m] is not None] for m in ("clean", "worst")}
        key = f"{arm['name']} - R (3x steps)"
        paired_real[key] = {m: interval(d) for m, d in diffs.items() if len(d) > 1}
    study = {"dataset": DATASET, "protocol": PROTOCOL, "seeds": list(SEEDS), "arms": arms, "summary": summary,
             "paired_vs_vanilla": paired, "paired_vs_real": paired_real, "missing": missing}
    for stage in ("gate2", "frozen"):
        path = work / f"{stage}.json"
        if path.exists():
            study[stage] = json.loads(path.read_text())
    if (work / "frozen.json").exists():
        study["cdp_config"] = {"name": cdp_config(work), "params": SWEEP[cdp_config(work)],
                               "frozen_by_the_sweep": bool(study["frozen"]["frozen"])}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(study, indent=1) + "\n")
    figures(work, study, img_dir)
    return {"stage": "report", "json": str(out_json), "missing": missing,
            "worst": {n: s.get("worst", {}).get("mean") for n, s in summary.items()}}


def figures(work: Path, study: dict[str, Any], img_dir: Path) -> None:
    """Robust accuracy per arm with intervals, validation curves, vanilla vs Contrastive-DP grids from the
    same noise (paper Fig. 5) and a PCA of the final classifiers' features per arm (paper App. D.5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    img_dir.mkdir(parents=True, exist_ok=True)
    names = [a["name"] for a in study["arms"] if a["runs"]]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for j, metric in enumerate(("clean", "worst")):
        means = [study["summary"][n][metric]["mean"] * 100 for n in names]
        errs = [np.nan_to_num(study["summary"][n][metric]["ci95"]) * 100 for n in names]
        label = {"clean": "clean", "worst": "robust (worst of PGD-20 CE / CW / AutoAttack)"}[metric]
        x = np.arange(len(names)) + (j - 0.5) * 0.2
        ax.errorbar(x, means, yerr=errs, fmt="o", capsize=3, label=label)
        for arm in study["arms"]:
            if arm["name"] in names:
                i = names.index(arm["name"])
                ax.scatter([i + (j - 0.5) * 0.2] * len(arm["runs"]), [r[metric] * 100 for r in arm["runs"]],
                           s=8, color="grey", zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"MNIST-5k (16 x 16), TRADES eps={PROTOCOL['eps']}: mean and 95 % interval over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img_dir / "mnist5k-arms.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for arm in study["arms"]:
        for k, r in enumerate(arm["runs"]):
            ax.plot(range(1, len(r["val_curve"]) + 1), [v * 100 for v in r["val_curve"]], alpha=0.7,
                    color=f"C{names.index(arm['name']) if arm['name'] in names else 0}",
                    label=arm["name"] if k == 0 else None)
    ax.set_xlabel(f"epoch ({PROTOCOL['trades']['steps_per_epoch']} steps)")
    ax.set_ylabel("validation PGD-10 accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img_dir / "mnist5k-curves.png", dpi=120)
    plt.close(fig)

    sets = {n: work / "sets" / f"arm-{n}" / "shards" / "0.npz" for n in ("vanilla", "cdp")}
    if all(p.exists() for p in sets.values()):
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
        for ax, (n, path) in zip(axes, sets.items(), strict=True):
            with np.load(path) as npz:
                first = npz["image"][:64, :, :, 0]
                grid = first.reshape(8, 8, 16, 16).transpose(0, 2, 1, 3).reshape(128, 128)
            ax.imshow(grid, cmap="gray", vmin=0, vmax=255)
            ax.set_title({"vanilla": "vanilla DDIM", "cdp": "Contrastive-DP"}[n] + " (same x_T)")
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(img_dir / "mnist5k-samples.png", dpi=120)
        plt.close(fig)
    pca_figure(work, names, img_dir)


def pca_figure(work: Path, names: list[str], img_dir: Path) -> None:
    """Test-set features of each arm's seed-0 final model, projected on their own first two principal axes."""
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from core.data import load_dataset
    from core.models import load_classifier

    shown = [n for n in names if (work / "runs" / n.replace("/", "_") / "0" / "final").exists()]
    if not shown:
        return
    test = load_dataset(DATASET, "test")
    x, y = test.to_tensors("cpu")
    fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 2.8), squeeze=False)
    for ax, name in zip(axes[0], shown, strict=True):
        model = load_classifier(work / "runs" / name.replace("/", "_") / "0" / "final").eval()
        with torch.no_grad():
            f = model.features(x).double().numpy()
        f = f - f.mean(0)
        _, _, vt = np.linalg.svd(f, full_matrices=False)
        z = f @ vt[:2].T
        ax.scatter(z[:, 0], z[:, 1], c=y.numpy(), cmap="tab10", s=2)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(img_dir / "mnist5k-features-pca.png", dpi=120)
    plt.close(fig)


def gates_report(work: Path, out_json: Path, img_dir: Path) -> dict[str, Any]:
    """docs/data/mnist5k-gates.json and docs/img/mnist5k-gate1.png from the cached gate runs (validation
    numbers only) and gate 2's sample metrics, for every seed that has finished. Rows whose cache is gone (a
    fresh clone, a later session) are kept from the JSON already there, and the gate-1 figure is then left
    as it is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gate1_rows: dict[str, list[dict[str, Any]]] = {}
    for name in ("R/2", "R", "R+O", "R (3x steps)", "R+O (3x steps)"):
        for seed in SEEDS:
            done = work / "runs" / name.replace("/", "_") / str(seed) / "metrics.json"
            if done.exists():
                m = json.loads(done.read_text())
                gate1_rows.setdefault(name, []).append({
                    "seed": seed, "final_val_pgd": m["final_val_pgd_acc"],
                    "final_val_clean": m["final_val_clean_acc"],
                    "val_curve": [h["val_pgd_acc"] for h in m["history"]], "steps": m["steps"],
                    "real_images": m.get("real_images"), "train_seconds": m["train_seconds"]})
    previous = json.loads(out_json.read_text()) if out_json.exists() else {}
    fresh, gate1_rows = gate1_rows, dict(previous.get("gate1", {}))
    for name, rows in fresh.items():  # a cached row replaces a recorded one only with as many seeds
        if len(rows) >= len(gate1_rows.get(name, [])):
            gate1_rows[name] = rows
    summary = {name: interval([r["final_val_pgd"] for r in rows]) for name, rows in gate1_rows.items()}
    gate2: dict[str, Any] = dict(previous.get("gate2", {}))
    sets = work / "sets"
    for label, path in (("4800 steps, width-16 classifiers", work / "attic" / "gate2-vanilla-300.json"),
                        ("9600 steps, width-16 classifiers", sets / "gate2-vanilla" / "metrics.json"),
                        ("9600 steps, width-32 classifiers", sets / "gate2-vanilla-w32aug" / "metrics.json"),
                        ("9600 steps, width-32 classifiers, 200 quad DDIM steps",
                         sets / "gate2-vanilla-w32aug-200quad" / "metrics.json"),
                        ("9600 steps, class-conditional, width-32 classifiers (the generator of record)",
                         sets / "gate2-vanilla-w32aug-cond" / "metrics.json")):
        if path.exists():
            m = json.loads(path.read_text())
            keys = ("outlier_fraction", "label_agreement", "class_entropy_normalized",
                    "near_duplicate_fraction", "nn_distance_median", "mean_confidence", "class_histogram",
                    "count", "seconds", "condition_agreement")
            gate2[label] = {k: m[k] for k in keys if k in m}
    out = {"dataset": DATASET, "protocol": PROTOCOL, "gate1": gate1_rows, "gate1_summary": summary,
           "gate2": gate2, "gate2_thresholds": GATE2}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(out, indent=1) + "\n")
    disagreement_figure(work, img_dir)
    if gate1_rows == previous.get("gate1"):  # nothing recomputed: the figure on disk stands
        return {"stage": "gates", "json": str(out_json), "gate1": {n: s["mean"] for n, s in summary.items()}}
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for k, (name, rows) in enumerate(gate1_rows.items()):
        for j, r in enumerate(rows):
            epochs = [(i + 1) * PROTOCOL["trades"]["steps_per_epoch"] for i in range(len(r["val_curve"]))]
            ax.plot(epochs, [v * 100 for v in r["val_curve"]], color=f"C{k}", alpha=0.8,
                    label=f"{name} ({len(rows)} seeds)" if j == 0 else None)
    ax.set_xlabel("TRADES steps (batch 64)")
    ax.set_ylabel("validation PGD-10 accuracy (%)")
    ax.set_title(f"Gate 1 on MNIST-5k 16 x 16, eps = {PROTOCOL['eps']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    img_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(img_dir / "mnist5k-gate1.png", dpi=120)
    plt.close(fig)
    return {"stage": "gates", "json": str(out_json), "gate1": {n: s["mean"] for n, s in summary.items()}}


def disagreement_figure(work: Path, img_dir: Path) -> None:
    """Gate 2's samples of the generator of record (docs/img/mnist5k-gate2-samples.png; the unconditional
    one's, if cached, to mnist5k-gate2-samples-unconditional.png): real R images, the first samples, and
    samples whose judge label differs from the pseudo-label."""
    for name, suffix in (("gate2-vanilla-w32aug-cond", ""), ("gate2-vanilla-w32aug", "-unconditional")):
        _samples_figure(work, name, img_dir / f"mnist5k-gate2-samples{suffix}.png")


def _samples_figure(work: Path, name: str, out: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from core.data import load_dataset
    from core.data.images import to_unit
    from core.models import load_classifier

    path = work / "sets" / name / "shards" / "0.npz"
    if not path.exists():
        return
    with np.load(path) as npz:
        images, labels = npz["image"], npz["label"]
    with torch.no_grad():
        x = to_unit(images)
        judged = load_classifier(judge(work))(x).argmax(1).numpy()
    odd = np.flatnonzero(judged != labels)[:40]
    train = load_dataset(DATASET, "train")
    real = train.images[[np.flatnonzero(train.labels == c)[i] for i in range(4) for c in range(10)]]
    n_odd = int((judged != labels).sum())
    panels = (("real images of R", real), ("first DDIM samples", images[:40]),
              (f"samples the judge labels differently ({n_odd} of {len(labels)}): pseudo-label / judge",
               images[odd]))
    fig, axes = plt.subplots(3, 1, figsize=(8, 3.6))
    for ax, (title, rows) in zip(axes, panels, strict=True):
        n = len(rows)
        grid = np.zeros((2 * 16, 20 * 16), dtype=np.uint8)
        for i in range(n):
            r, c = divmod(i, 20)
            grid[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = rows[i, :, :, 0]
        ax.imshow(grid, cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        if title.startswith("samples"):
            for i, k in enumerate(odd):
                r, c = divmod(i, 20)
                ax.text(c * 16 + 1, r * 16 + 4, f"{labels[k]}/{judged[k]}", color="yellow", fontsize=5)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
