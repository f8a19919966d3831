"""Parts of the report page that explain what its figures show: the per-arm table that puts each arm's
robust accuracy beside the sample metrics (and warnings) of its synthetic set, and the notes on intervals
and training curves."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from core.experiment_report.statistics import INTERVAL, METRIC_LABELS, ROBUST_METRIC

# Sample metrics of a generation job shown per arm: (key in its metrics.json, column label, as a percentage)
SAMPLE_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("label_agreement", "judge agrees", True),
    ("mean_confidence", "confidence", True),
    ("separability_margin", "separability margin", False),
    ("outlier_fraction", "outliers", True),
    ("near_duplicate_fraction", "near duplicates", True),
    ("class_entropy_normalized", "class balance", False),
    ("tstr_accuracy", "TSTR acc.", True),
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, pct: bool) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    return f"{100 * value:.1f} %" if pct else f"{value:.3f}"


def interval_note(summary: Mapping[str, Any], metric: str = ROBUST_METRIC) -> str:
    """What the dots, diamonds and bars are, and why an arm with one seed has no bar."""
    ns = sorted({entry[metric]["n"] for entry in summary["arms"].values() if metric in entry})
    text = ("Each dot is one seed's model (labelled s0, s1, ...); the diamond is the mean over seeds. "
            f"The bar is the {INTERVAL} interval of that mean: mean ± t(0.975, n − 1) · sd / √n over "
            "the n seeds, so it is wide with few seeds and narrows as seeds are added. ")
    if ns == [1]:
        text += ("Every arm here has one seed: no interval can be given (a spread needs at least two seeds), "
                 "so differences between arms cannot be told from seed noise. Run more seeds "
                 "(\"seeds\": [0, 1, 2]) for intervals.")
    elif 1 in ns:
        text += "An arm with one seed shows no bar: no interval can be given from one value."
    return f'<p class="explain" id="interval-note">{_e(text)}</p>'


def curves_note(has_steps: bool, single: Sequence[str] = ()) -> str:
    if has_steps:
        text = ("Lines over optimiser steps: the per-step panels show every step's training loss "
                "(averaged in at most 500 buckets); the per-epoch panels put each epoch's record at its "
                "last step. Colour is the arm; each seed is its own line.")
        if single:
            text += (f" Every run trained one epoch, so {', '.join(single)} have one value per seed and are "
                     "not drawn as curves (see each training job's metrics).")
    else:
        text = ("Lines over epochs (these runs recorded no per-step curve). Colour is the arm; one line per "
                "seed.")
    return f'<p class="explain" id="curves-note">{_e(text)}</p>'


def _robust_cell(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return '<td class="muted">–</td>'
    mean = f"{100 * entry['mean']:.1f}"
    if entry["ci95"] is None:
        return f'<td>{mean}<span class="ci">1 seed: no interval</span></td>'
    lo, hi = (100 * v for v in entry["ci95"])
    return f'<td>{mean}<span class="ci">[{lo:.1f}, {hi:.1f}] (n={entry["n"]})</span></td>'


def arms_table(summary: Mapping[str, Any], runs: Sequence[Mapping[str, Any]],
               samples: Mapping[str, Mapping[str, Any]], metric: str = ROBUST_METRIC) -> str:
    """One row per arm: its robust accuracy (mean and interval), the synthetic share it trained on, the
    sample metrics of its synthetic set and every warning (of the set's generation and of the evaluations)."""
    shown = [(key, label, pct) for key, label, pct in SAMPLE_METRICS
             if any(isinstance((s.get("metrics") or {}).get(key), (int, float)) for s in samples.values())]
    head = (f'<th class="arm">arm</th><th>{_e(METRIC_LABELS.get(metric, metric))} robust acc. (%)'
            f'<span class="ci">mean, {_e(INTERVAL)} interval</span></th><th>synthetic share</th>')
    head += "".join(f"<th>{_e(label)}<span class=\"ci\">of its synthetic set</span></th>"
                    for _, label, _ in shown)
    head += "<th>warnings</th>"
    rows = []
    for arm, entry in summary["arms"].items():
        sample = samples.get(arm) or {}
        values = sample.get("metrics") or {}
        share = entry.get("synthetic_share")
        warnings = [str(w) for w in sample.get("warnings") or []]
        warnings += sorted({f"seed {r.get('seed')}: {w}" for r in runs if r.get("arm") == arm
                            for w in r.get("warnings") or []})
        cells = [f'<th scope="row" class="arm">{_e(arm)}</th>', _robust_cell(entry.get(metric)),
                 f"<td>{'real only' if share is None else f'{100 * share:.0f} %'}</td>"]
        if not sample and shown:
            why = "real data only" if share is None else "no sample metrics"
            cells.append(f'<td class="muted" colspan="{len(shown)}">{why}</td>')
        else:
            cells += [f"<td>{_fmt(values.get(key), pct)}</td>" for key, _, pct in shown]
        cells.append(f'<td><ul class="warn">{"".join(f"<li>{_e(w)}</li>" for w in warnings)}</ul></td>'
                     if warnings else '<td class="muted">none</td>')
        rows.append(f'<tr data-arm="{_e(arm)}">{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table id="arms"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')
