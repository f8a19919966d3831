"""The figures of the experiment report as PNG bytes, drawn with matplotlib's Agg canvas (no pyplot state),
made for a page at full width (12 x ~4 inches at 100 dpi): the robust accuracy per arm
(:func:`robust_plot`) and the training curves over optimiser steps (:func:`training_curves`).

Colour is used only where it carries meaning: the robust-accuracy plot names its arms on the x axis and
draws them all in one colour (the reference arm in grey), so it needs no colour legend; the training curves
give each arm a colour (one legend above the panels) and each seed its own thin line in that colour.
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
from matplotlib.lines import Line2D

from core.experiment_report.statistics import INTERVAL, METRIC_LABELS, ROBUST_METRIC

_DPI = 100
WIDTH_IN = 12.0
_INK = "#1f4e9a"
_REFERENCE = "0.45"


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
    """PNG: ``metric`` per arm: every seed as a labelled dot, the mean as a diamond with its 95 % interval as
    a bar, or "1 seed: no interval" where an arm has one seed; None when no arm has the metric."""
    arms = [a for a, entry in summary["arms"].items() if metric in entry]
    if not arms:
        return None
    fig = Figure(figsize=(WIDTH_IN, 4.2))
    ax = fig.subplots()
    for i, arm in enumerate(arms):
        entry = summary["arms"][arm][metric]
        colour = _REFERENCE if arm == summary.get("reference") else _INK
        vals = 100 * np.asarray(entry["values"], dtype=float)
        offsets = np.linspace(-0.1, 0.1, len(vals)) if len(vals) > 1 else np.zeros(1)
        xs = i + 0.16 + offsets
        ax.scatter(xs, vals, s=30, color=colour, alpha=0.8, zorder=3, edgecolors="white", linewidths=0.6)
        for x, v, seed in zip(xs, vals, entry.get("seeds") or [], strict=False):
            ax.annotate(f"s{seed}", (x, v), xytext=(4, 0), textcoords="offset points", fontsize=7,
                        color="0.35", va="center")
        mean = 100 * entry["mean"]
        if entry["ci95"] is not None:
            lo, hi = (100 * v for v in entry["ci95"])
            ax.errorbar([i - 0.12], [mean], yerr=[[mean - lo], [hi - mean]], fmt="D", ms=7, capsize=6,
                        color=colour, zorder=4, lw=1.6)  # fmt: skip
            ax.annotate(f"{mean:.1f}\n[{lo:.1f}, {hi:.1f}]", (i - 0.12, hi), xytext=(0, 4),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7.5)
        else:
            ax.plot([i - 0.12], [mean], "D", ms=7, color=colour, zorder=4)
            ax.annotate(f"{mean:.1f}\n1 seed: no interval", (i - 0.12, mean), xytext=(0, 8),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7.5, color="0.3")
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(arms, fontsize=9)
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.margins(y=0.25)
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} accuracy (%)", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    label = METRIC_LABELS.get(metric, metric)
    ax.set_title(f"{label} robust accuracy per arm: dots = seeds, diamond = mean, bar = {INTERVAL} interval",
                 fontsize=10)
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def curve_keys(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The per-epoch history keys :func:`training_curves` plots: accuracies first, then losses, sorted."""
    keys: set[str] = set()
    for run in runs:
        for record in run.get("history") or []:
            for key, value in record.items():
                if key != "epoch" and _is_number(value) and _curve_kind(key):
                    keys.add(key)
    return sorted(keys, key=lambda k: (_curve_kind(k) != "accuracy", k))


def single_point_keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """History keys no run has at two epochs or more (one-epoch runs): a line of one point says nothing, so
    when the runs have a per-step curve :func:`training_curves` leaves them out."""
    counts: dict[str, int] = {}
    for run in runs:
        for key in curve_keys([run]):
            n = sum(1 for rec in run.get("history") or [] if _is_number(rec.get(key)))
            counts[key] = max(counts.get(key, 0), n)
    return sorted(k for k, n in counts.items() if n < 2)


def step_keys(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The per-step keys of the runs' ``steps`` curves (``loss`` first)."""
    keys = {k for run in runs for rec in run.get("steps") or [] for k, v in rec.items()
            if k != "step" and _is_number(v)}
    return sorted(keys, key=lambda k: (k != "loss", k))


def _epoch_x(run: Mapping[str, Any]) -> tuple[dict[int, float], bool]:
    """Epoch -> its last optimiser step (from the run's step curve), and whether steps are known."""
    history = run.get("history") or []
    steps = run.get("steps") or []
    epochs = [int(rec.get("epoch", n + 1)) for n, rec in enumerate(history)]
    if not steps or not epochs:
        return {epoch: float(epoch) for epoch in epochs}, False
    per_epoch = steps[-1]["step"] / max(epochs)
    return {epoch: epoch * per_epoch for epoch in epochs}, True


def training_curves(runs: Sequence[Mapping[str, Any]], arms: Sequence[str]) -> bytes | None:
    """PNG: one panel per quantity, three to a row: first the per-step curves (``steps``: the loss of every
    optimiser step, bucket-averaged), then each per-epoch history key placed at its epoch's last step (left
    out where every run has one epoch and a step curve exists: :func:`single_point_keys`); one colour per
    arm (legend above), one line per seed. None when no run has a history or a step curve."""
    skeys, hkeys = step_keys(runs), curve_keys(runs)
    if skeys:
        hkeys = [k for k in hkeys if k not in single_point_keys(runs)]
    panels = [("steps", k) for k in skeys] + [("history", k) for k in hkeys]
    shown_arms = [a for a in arms if any(r.get("arm") == a and (r.get("history") or r.get("steps"))
                                         for r in runs)]
    if not panels or not shown_arms:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(WIDTH_IN, 2.9 * rows + 0.7))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colour = {arm: f"C{i % 10}" for i, arm in enumerate(shown_arms)}
    any_steps = False
    for ax, (source, key) in zip(axes, panels, strict=False):
        single = True
        for run in sorted(runs, key=lambda r: (str(r.get("arm")), r.get("seed", 0))):
            arm = run.get("arm")
            if arm not in colour:
                continue
            if source == "steps":
                pts = [(rec["step"], rec[key]) for rec in run.get("steps") or [] if _is_number(rec.get(key))]
                any_steps = any_steps or bool(pts)
            else:
                xs_of, known = _epoch_x(run)
                any_steps = any_steps or known
                pts = [(xs_of.get(int(rec.get("epoch", n + 1)), n + 1), rec[key])
                       for n, rec in enumerate(run.get("history") or []) if _is_number(rec.get(key))]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            single = single and len(pts) == 1
            lw = 0.9 if source == "steps" else 1.4
            marker = "o" if len(pts) <= 12 else None
            ax.plot(xs, ys, color=colour[arm], lw=lw, alpha=0.75, marker=marker, ms=3)
        title = f"{key} (per step)" if source == "steps" else f"{key} (per epoch)"
        if single and source == "history":
            title += ": one epoch, one point per seed"
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7.5)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.set_xlabel("optimiser step" if any_steps else "epoch", fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colour[a], lw=2.5) for a in shown_arms]
    fig.legend(handles, shown_arms, loc="upper center", ncol=min(len(shown_arms), 6), fontsize=9,
               frameon=False, title="colour = arm; one line per seed", title_fontsize=8.5)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / (2.9 * rows + 0.7)))
    return _png(fig)
