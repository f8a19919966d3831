"""Statistics over seeds and the self-contained HTML report of an experiment job.

An experiment compares *arms* (for example "real only", "+ vanilla DDIM", "+ Contrastive-DP") over seeds: for
each (arm, seed) one TRADES model is trained and evaluated. This module turns those runs into numbers and a
page:

* :func:`summarize`: per arm and metric the mean, the sample standard deviation and the Student-t 95 %
  interval of the mean over seeds; for each non-reference arm the paired difference to the reference over the
  seeds both arms have, with its paired-t interval.
* :func:`render_html`: one HTML page with everything inline (CSS, figures as base64 PNG data URIs drawn with
  matplotlib's Agg canvas), readable in a browser with no network and no JavaScript.

Torch-free and free of the service's seams (settings, storage, jobs): the experiment step collects the runs
and writes the page wherever it likes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

DEFAULT_METRICS: tuple[str, ...] = ("clean_acc", "pgd_ce_acc", "pgd_cw_acc", "worst_acc", "autoattack_acc")
INTERVAL = "95% Student t"
ROBUST_METRIC = "worst_acc"
METRIC_LABELS = {
    "clean_acc": "clean",
    "pgd_ce_acc": "PGD-CE",
    "pgd_cw_acc": "PGD-CW",
    "worst_acc": "worst case",
    "autoattack_acc": "AutoAttack",
}
_RESERVED = ("synthetic_share",)
_DPI = 80


# --------------------------------------------------------------------------------------------- statistics


def _describe(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std (ddof=1) and the two-sided 95 % Student-t interval of the mean; std and interval are
    None with fewer than two values."""
    arr = np.asarray(values, dtype=float)
    n = int(arr.size)
    mean = float(arr.mean())
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": n}
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n}


def _number(value: Any, *, what: str) -> float | None:
    """A finite float, None for None; anything else is a ValueError naming ``what``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what}: expected a finite number, got {value!r}")
    return number


def summarize(
    runs: list[dict],
    *,
    arms: list[str],
    reference: str,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
) -> dict:
    """Statistics over seeds of an experiment's runs.

    Each run is ``{"arm", "seed", "metrics": {name: float}, "synthetic_share": float | None,
    "history": [...]}`` (``synthetic_share`` and ``history`` are optional here). Returns::

        {"reference": str, "interval": "95% Student t", "metrics": [names present, in ``metrics`` order],
         "arms": {arm: {metric: {"mean", "std", "ci95", "n", "values", "seeds"}, ...,
                        "synthetic_share": float | None}},
         "paired": {arm: {metric: {"mean", "std", "ci95", "n", "values", "seeds", "method": "paired t"}}}}

    ``arms`` keeps the order of the argument and lists every arm, also one without runs (it then has only
    ``synthetic_share``). ``values`` are ordered by seed and ``seeds`` name them. ``std`` is the sample
    standard deviation (ddof=1) and ``ci95`` the ``[lo, hi]`` Student-t interval of the mean, both None with
    one seed. ``paired`` has every arm but the reference: per metric the differences (arm - reference) over
    the seeds both have that metric for; a metric with no such seed is left out. A metric missing from a run,
    or None there, is skipped for that run. Raises ValueError on an unknown arm, a duplicated (arm, seed), a
    reference that is not an arm, duplicated arm names or a value that is not a finite number.
    """
    arms = list(arms)
    if not arms:
        raise ValueError("arms: at least one arm is needed")
    if len(set(arms)) != len(arms):
        raise ValueError(f"arms: names must be unique, got {arms}")
    if reference not in arms:
        raise ValueError(f"reference={reference!r} is not one of the arms {arms}")
    clash = [m for m in metrics if m in _RESERVED]
    if clash:
        raise ValueError(f"metrics: {clash} is a reserved key of the summary")

    # (arm -> seed -> metric -> value) and (arm -> shares)
    table: dict[str, dict[int, dict[str, float]]] = {arm: {} for arm in arms}
    shares: dict[str, list[float]] = {arm: [] for arm in arms}
    for i, run in enumerate(runs):
        arm = run.get("arm")
        if arm not in table:
            raise ValueError(f"runs[{i}]: unknown arm {arm!r}; the arms are {arms}")
        seed = run.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"runs[{i}] (arm {arm!r}): seed must be an integer, got {seed!r}")
        seed = int(seed)
        if seed in table[arm]:
            raise ValueError(f"runs[{i}]: duplicated run for arm {arm!r} and seed {seed}")
        values: dict[str, float] = {}
        for name in metrics:
            number = _number((run.get("metrics") or {}).get(name), what=f"arm {arm!r} seed {seed} {name}")
            if number is not None:
                values[name] = number
        table[arm][seed] = values
        share = _number(run.get("synthetic_share"), what=f"arm {arm!r} seed {seed} synthetic_share")
        if share is not None:
            shares[arm].append(share)

    present = [m for m in metrics if any(m in v for per_seed in table.values() for v in per_seed.values())]
    summary_arms: dict[str, dict[str, Any]] = {}
    for arm in arms:
        entry: dict[str, Any] = {}
        for name in present:
            seeds = sorted(s for s, v in table[arm].items() if name in v)
            if seeds:
                vals = [table[arm][s][name] for s in seeds]
                entry[name] = {**_describe(vals), "values": vals, "seeds": seeds}
        entry["synthetic_share"] = float(np.mean(shares[arm])) if shares[arm] else None
        summary_arms[arm] = entry

    paired: dict[str, dict[str, Any]] = {}
    ref = table[reference]
    for arm in arms:
        if arm == reference:
            continue
        paired[arm] = {}
        for name in present:
            seeds = sorted(s for s, v in table[arm].items() if name in v and name in ref.get(s, {}))
            if seeds:
                diffs = [table[arm][s][name] - ref[s][name] for s in seeds]
                paired[arm][name] = {**_describe(diffs), "values": diffs, "seeds": seeds,
                                     "method": "paired t"}  # fmt: skip

    return {"reference": reference, "interval": INTERVAL, "metrics": present, "arms": summary_arms,
            "paired": paired}  # fmt: skip


# --------------------------------------------------------------------------------------------- figures


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # no Software/URL text chunk: the page names no address at all
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _data_uri(data: bytes) -> str:
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


# --------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:1.5rem auto;
max-width:1400px;padding:0 1rem;color:#1d1d1f;line-height:1.4}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;
padding-bottom:.2rem}.meta{color:#555;font-size:.9rem}
table{border-collapse:collapse;font-size:.84rem;margin:.5rem 0}
.scroll{overflow-x:auto}
th,td{border:1px solid #d0d0d0;padding:.25rem .45rem;text-align:right;vertical-align:top}
td{white-space:nowrap}
th{background:#f3f3f5}td.arm,th.arm{text-align:left;font-weight:600;white-space:nowrap}
tbody th.arm{background:#fff}tr.reference th.arm{background:#fafafa}
tr.reference td{background:#fafafa}.ci{display:block;color:#666;font-size:.75rem;white-space:nowrap}
.pos{color:#0a7a2f;font-weight:600}.neg{color:#b3261e;font-weight:600}.muted{color:#888}
img{max-width:100%;height:auto}#previews{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;border:1px solid #ddd;padding:.5rem;background:#fff}figcaption{font-size:.85rem;
text-align:center;margin-top:.3rem;font-weight:600}#previews img{image-rendering:pixelated;width:320px}
pre{background:#f6f8fa;border:1px solid #ddd;padding:.8rem;overflow:auto;font-size:.78rem;max-height:40rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _value_cell(stat: Mapping[str, Any] | None) -> str:
    if not stat:
        return '<td class="muted">–</td>'
    if stat["std"] is None:
        main = f"{_pct(stat['mean'])} <span class=\"muted\">(1 seed)</span>"
        ci = ""
    else:
        lo, hi = stat["ci95"]
        main = f"{_pct(stat['mean'])} ± {_pct(stat['std'])}"
        ci = f'<span class="ci">[{_pct(lo)}, {_pct(hi)}]</span>'
    return f"<td>{main}{ci}</td>"


def _diff_cell(stat: Mapping[str, Any] | None, *, is_reference: bool, arm_n: int) -> str:
    if is_reference:
        return '<td class="muted">reference</td>'
    if not stat:
        return '<td class="muted">–</td>'
    mean = f"{_pct(stat['mean'], signed=True)} pp"
    n_note = f" n={stat['n']}" if stat["n"] != arm_n else ""  # only when fewer seeds pair than the arm has
    if stat["ci95"] is None:
        return f'<td>{mean}<span class="ci">1 paired seed</span></td>'
    lo, hi = stat["ci95"]
    cls = "pos" if lo > 0 else "neg" if hi < 0 else ""
    attr = f' class="{cls}"' if cls else ""
    return (f'<td title="paired t over seeds {_e(stat["seeds"])}"><span{attr}>{mean}</span><span class="ci">'
            f'[{_pct(lo, signed=True)}, {_pct(hi, signed=True)}]{n_note}</span></td>')  # fmt: skip


def _results_table(summary: Mapping[str, Any]) -> str:
    metrics = list(summary.get("metrics") or [])
    reference = summary["reference"]
    head1 = ['<th class="arm" rowspan="2">arm<span class="ci">seeds · synthetic share</span></th>']
    head2: list[str] = []
    for m in metrics:
        head1.append(f'<th colspan="2" title="{_e(m)}">{_e(_label(m))} (%)</th>')
        head2 += ['<th>mean ± std<span class="ci">95% CI</span></th>',
                  f'<th title="{_e(f"arm - {reference}")}">Δ vs ref.'
                  '<span class="ci">paired 95% CI</span></th>']  # fmt: skip
    rows = []
    for arm, entry in summary["arms"].items():
        is_ref = arm == reference
        seeds = sorted({s for m in metrics if m in entry for s in entry[m]["seeds"]})
        share = entry.get("synthetic_share")
        about = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
        about += " · real only" if share is None else f" · {100 * share:.0f} % synthetic"
        cells = [f'<th scope="row" class="arm"><span class="arm-name">{_e(arm)}</span>'
                 f'<span class="ci">{_e(about)}</span></th>']  # fmt: skip
        for m in metrics:
            stat = entry.get(m)
            cells.append(_value_cell(stat))
            cells.append(_diff_cell(summary.get("paired", {}).get(arm, {}).get(m), is_reference=is_ref,
                                    arm_n=stat["n"] if stat else 0))  # fmt: skip
        cls = ' class="reference"' if is_ref else ""
        rows.append(f'<tr{cls} data-arm="{_e(arm)}">{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table id="results"><thead><tr>{"".join(head1)}</tr>'
            f'<tr>{"".join(head2)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')  # fmt: skip


def _per_seed_table(runs: Sequence[Mapping[str, Any]], arms: Sequence[str], metrics: Sequence[str]) -> str:
    order = {a: i for i, a in enumerate(arms)}
    ordered = sorted(runs, key=lambda r: (order.get(r.get("arm"), len(order)), r.get("seed", 0)))
    head = "".join(f"<th>{_e(_label(m))}</th>" for m in metrics)
    rows = []
    for run in ordered:
        vals = run.get("metrics") or {}
        cells = "".join(f"<td>{_pct(vals.get(m))}</td>" for m in metrics)
        arm_cell = f'<td class="arm">{_e(run.get("arm"))}</td>'
        rows.append(f'<tr>{arm_cell}<td>{_e(run.get("seed"))}</td>{cells}</tr>')
    return (f'<table id="per-seed"><thead><tr><th class="arm">arm</th><th>seed</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')  # fmt: skip


def _img(id_: str, png: bytes | None, alt: str, missing: str) -> str:
    if png is None:
        return f'<p class="muted" id="{_e(id_)}-missing">{_e(missing)}</p>'
    return f'<img id="{_e(id_)}" src="{_data_uri(png)}" alt="{_e(alt)}">'


def render_html(report: dict) -> str:
    """One self-contained HTML page of an experiment.

    ``report`` is ``{"title": str, "summary": summarize(...), "runs": [...], "previews": {arm: bytes | None},
    "specs": {"experiment": dict, "children": {...}}}``. The page has the results table (``#results``, one
    row per arm: mean ± std and 95 % interval per metric, paired difference to the reference), the robust
    accuracy plot (``#robust-plot``), the training curves (``#training-curves``), the per-seed numbers
    (``#per-seed``), the preview grids (``#previews``, one ``<figure>`` per arm with a preview) and the specs
    as pretty JSON (``#specs``). Every image is a data URI; the page loads nothing and runs no script.
    """
    summary = report["summary"]
    runs = list(report.get("runs") or [])
    previews = dict(report.get("previews") or {})
    specs = report.get("specs") or {}
    title = str(report.get("title") or "Experiment report")
    arms = list(summary["arms"])
    metrics = list(summary.get("metrics") or [])
    seeds = sorted({r["seed"] for r in runs if "seed" in r})

    robust = robust_plot(summary)
    curves = training_curves(runs, arms)
    preview_arms = [a for a in arms if previews.get(a)]
    preview_arms += [a for a in previews if a not in arms and previews[a]]
    figures = "".join(
        f'<figure data-arm="{_e(arm)}"><img src="{_data_uri(previews[arm])}" '
        f'alt="{_e(f"preview grid of the synthetic set of {arm}")}">'
        f"<figcaption>{_e(arm)}</figcaption></figure>"
        for arm in preview_arms
    )
    no_preview = [a for a in arms if a not in preview_arms]
    note = (f'<p class="muted">No preview for: {_e(", ".join(no_preview))} (no synthetic set).</p>'
            if no_preview else "")  # fmt: skip
    specs_json = json.dumps(specs, indent=2, sort_keys=False, ensure_ascii=False, default=str)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{len(arms)} arms × {len(seeds)} seeds ({_e(", ".join(map(str, seeds)))}); '
        f"reference arm: <b>{_e(summary['reference'])}</b>; "
        f"intervals: {_e(summary.get('interval', INTERVAL))} "
        "of the mean over seeds; differences are paired over the seeds both arms have, in percentage points "
        "(pp); Δ vs ref. is arm minus the reference arm. Accuracies in %.</p>",
        '<h2>Results</h2>',
        _results_table(summary),
        '<p class="meta">Green: the paired interval lies above 0; red: below 0.</p>',
        "<h2>Robust accuracy</h2>",
        _img("robust-plot", robust, f"{ROBUST_METRIC} per arm: every seed as a dot, the mean with its "
             f"{INTERVAL} interval", f"No run has {ROBUST_METRIC}."),  # fmt: skip
        "<h2>Training curves</h2>",
        _img("training-curves", curves, "training curves per arm: accuracy and loss against epoch, one line "
             "per seed", "No run has a training history."),  # fmt: skip
        "<h2>Per-seed results</h2>",
        _per_seed_table(runs, arms, metrics),
        "<h2>Synthetic sets</h2>",
        f'<section id="previews">{figures}</section>',
        note,
        "<h2>Specs</h2>",
        f'<pre id="specs">{_e(specs_json)}</pre>',
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
