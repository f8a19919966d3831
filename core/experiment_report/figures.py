"""The figures of the experiment report as PNG bytes, drawn with matplotlib's Agg canvas (no pyplot state):
the robust accuracy per arm (:func:`robust_plot`) and the training curves per arm and seed
(:func:`training_curves`).
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.experiment_report.statistics import INTERVAL, METRIC_LABELS, ROBUST_METRIC

_DPI = 80


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # no Software/URL text chunk: the page names no address at all
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    """A ``data:`` URI of image bytes, the type told by their magic bytes (PNG, JPEG, GIF, WebP)."""
    mime = "image/png"
    if data[:3] == b"\xff\xd8\xff":
        mime = "image/jpeg"
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        mime = "image/gif"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def robust_plot(summary: Mapping[str, Any], metric: str = ROBUST_METRIC) -> bytes | None:
    """PNG: ``metric`` per arm, every seed as a dot, the mean as a bar tick with its 95 % interval; None when
    no arm has the metric."""
    arms = [a for a, entry in summary["arms"].items() if metric in entry]
    if not arms:
        return None
    fig = Figure(figsize=(max(6.0, 1.4 * len(arms) + 2.0), 3.6))
    ax = fig.subplots()
    for i, arm in enumerate(arms):
        entry = summary["arms"][arm][metric]
        colour = "0.35" if arm == summary.get("reference") else f"C{i % 10}"
        vals = 100 * np.asarray(entry["values"])
        offsets = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.zeros(1)
        ax.scatter(i + 0.18 + offsets, vals, s=18, color=colour, alpha=0.75, zorder=3,
                   label="per seed" if i == 0 else None)  # fmt: skip
        mean = 100 * entry["mean"]
        if entry["ci95"] is not None:
            lo, hi = (100 * v for v in entry["ci95"])
            ax.errorbar([i - 0.12], [mean], yerr=[[mean - lo], [hi - mean]], fmt="D", ms=6, capsize=5,
                        color=colour, zorder=4, label="mean, 95% CI" if i == 0 else None)  # fmt: skip
        else:
            ax.plot([i - 0.12], [mean], "D", ms=6, color=colour, zorder=4, label="mean" if i == 0 else None)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(arms, fontsize=8)
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} accuracy (%)", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"robust accuracy ({metric}) per arm: seeds and {INTERVAL} interval", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _png(fig)


def _curve_kind(key: str) -> str | None:
    """'accuracy' or 'loss' for a history key that looks like one (train_clean_acc, val_pgd_acc, train_loss,
    train_ce, train_kl, ...), else None (epoch, lr, elapsed, ...)."""
    low = key.lower()
    if re.search(r"acc", low):
        return "accuracy"
    if re.search(r"loss|(^|_)(ce|kl|nll)(_|$)", low):
        return "loss"
    return None


def curve_keys(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The history keys :func:`training_curves` plots: accuracies first, then losses, each sorted."""
    keys: set[str] = set()
    for run in runs:
        for record in run.get("history") or []:
            for key, value in record.items():
                is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if key != "epoch" and is_number and _curve_kind(key):
                    keys.add(key)
    return sorted(keys, key=lambda k: (_curve_kind(k) != "accuracy", k))


def training_curves(runs: Sequence[Mapping[str, Any]], arms: Sequence[str]) -> bytes | None:
    """PNG: one row per arm with history, one column per accuracy/loss key, one line per seed against epoch
    (the y axis shared down each column so arms compare); None when no run has a history."""
    keys = curve_keys(runs)
    rows = [a for a in arms if any(r.get("arm") == a and r.get("history") for r in runs)]
    if not keys or not rows:
        return None
    fig = Figure(figsize=(2.5 * len(keys) + 0.6, 1.9 * len(rows) + 0.6))
    axes = np.atleast_2d(fig.subplots(len(rows), len(keys), sharex=True, sharey="col", squeeze=False))
    for r, arm in enumerate(rows):
        arm_runs = sorted((run for run in runs if run.get("arm") == arm), key=lambda run: run.get("seed", 0))
        for c, key in enumerate(keys):
            ax = axes[r, c]
            for j, run in enumerate(arm_runs):
                points = [
                    (rec.get("epoch", n + 1), rec[key])
                    for n, rec in enumerate(run.get("history") or [])
                    if isinstance(rec.get(key), (int, float)) and not isinstance(rec.get(key), bool)
                ]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker="o", ms=2.5, lw=1.1, color=f"C{j % 10}",
                            label=f"seed {run['seed']}")  # fmt: skip
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.set_title(key, fontsize=8)
            if c == 0:
                ax.set_ylabel(arm, fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel("epoch", fontsize=7)
        axes[r, 0].legend(fontsize=6, loc="best")
    fig.suptitle("training curves (one line per seed)", fontsize=9)
    fig.tight_layout()
    return _png(fig)
