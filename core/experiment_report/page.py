"""The self-contained HTML page of an experiment (:func:`render_html`): everything inline (CSS, figures as
base64 PNG data URIs), readable in a browser with no network and no JavaScript.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from core.experiment_report.figures import data_uri, robust_plot, single_point_keys, training_curves
from core.experiment_report.sections import arms_table, curves_note, interval_note
from core.experiment_report.statistics import INTERVAL, METRIC_LABELS, ROBUST_METRIC

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
img{max-width:100%;height:auto}img.figure{width:100%;display:block;margin:.5rem 0}
.explain{font-size:.88rem;color:#333;max-width:60rem}.warn{color:#8a4b00}
ul.warn{margin:.2rem 0;padding-left:1.1rem;font-size:.8rem;white-space:normal;text-align:left}
table#arms{width:100%}table#arms td{white-space:normal}#previews{display:flex;flex-wrap:wrap;gap:1rem}
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
    return f'<img id="{_e(id_)}" class="figure" src="{data_uri(png)}" alt="{_e(alt)}">'


def _failed_arms(failed: dict) -> str:
    """The arms left out because their generation failed (``#failed-arms``), or nothing."""
    if not failed:
        return ""
    items = "".join(f"<li><b>{_e(arm)}</b>: {_e(str(why))}</li>" for arm, why in failed.items())
    return (f'<div id="failed-arms"><p>Left out of the table, their synthetic set could not be made:</p>'
            f"<ul>{items}</ul></div>")


def render_html(report: dict) -> str:
    """One self-contained HTML page of an experiment.

    ``report`` is ``{"title": str, "summary": summarize(...), "runs": [...], "previews": {arm: bytes | None},
    "specs": {"experiment": dict, "children": {...}}, "failed_arms": {arm: why}}`` and optionally
    ``"samples": {arm: {"job": id, "metrics": {...}, "warnings": [...]}}`` (the generation metrics of each
    arm's synthetic set); a run may carry ``steps`` (its per-step curve) beside ``history``. The page lists
    the arms whose generation failed (``#failed-arms``, when there are), then has the results table
    (``#results``, one row per arm: mean ± std and 95 % interval per metric, paired difference to the
    reference), the robust accuracy plot (``#robust-plot``) with the note on its intervals
    (``#interval-note``) and the per-arm table (``#arms``: robust accuracy beside its synthetic set's sample
    metrics and warnings), the training curves (``#training-curves``), the per-seed numbers (``#per-seed``),
    the preview grids (``#previews``, one ``<figure>`` per arm with a preview) and the specs as pretty JSON
    (``#specs``). Every image is a data URI; the page loads nothing and runs no script.
    """
    summary = report["summary"]
    runs = list(report.get("runs") or [])
    previews = dict(report.get("previews") or {})
    specs = report.get("specs") or {}
    title = str(report.get("title") or "Experiment report")
    arms = list(summary["arms"])
    metrics = list(summary.get("metrics") or [])
    seeds = sorted({r["seed"] for r in runs if "seed" in r})

    samples = dict(report.get("samples") or {})
    robust = robust_plot(summary)
    curves = training_curves(runs, arms)
    preview_arms = [a for a in arms if previews.get(a)]
    preview_arms += [a for a in previews if a not in arms and previews[a]]
    figures = "".join(
        f'<figure data-arm="{_e(arm)}"><img src="{data_uri(previews[arm])}" '
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
        _failed_arms(report.get("failed_arms") or {}),
        _results_table(summary),
        '<p class="meta">Green: the paired interval lies above 0; red: below 0.</p>',
        "<h2>Robust accuracy</h2>",
        _img("robust-plot", robust, f"{ROBUST_METRIC} per arm: every seed as a dot, the mean with its "
             f"{INTERVAL} interval", f"No run has {ROBUST_METRIC}."),  # fmt: skip
        interval_note(summary) if robust else "",
        "<h3>Each arm: robust accuracy beside its synthetic set</h3>",
        arms_table(summary, runs, samples),
        "<h2>Training curves</h2>",
        _img("training-curves", curves, "training curves: loss per optimiser step and each epoch's accuracy "
             "and loss, one colour per arm, one line per seed", "No run has a training history."),
        curves_note(any(r.get("steps") for r in runs), single_point_keys(runs)) if curves else "",
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
