"""What the console's templates show: flattened metrics, warnings, sizes, artifacts. No HTTP here."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

# metrics.json keys that are not one number and are shown elsewhere (or not at all) on a job page
_SKIP = frozenset({"history", "warnings", "runs", "children", "arms", "paired", "steps", "spec"})


def pretty_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False, default=str)


def number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "–"
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, value) for every number, string and short list of numbers in ``metrics``, one level of nested
    objects flattened as ``parent.child`` (``test.clean_acc``)."""
    rows: list[tuple[str, str]] = []

    def add(name: str, value: Any, depth: int) -> None:
        if isinstance(value, Mapping):
            if depth == 0:
                for k, v in value.items():
                    add(f"{name}.{k}", v, depth + 1)
        elif isinstance(value, list):
            if value and len(value) <= 20 and all(isinstance(v, (int, float)) for v in value):
                rows.append((name, ", ".join(number(v) for v in value)))
        else:
            rows.append((name, number(value)))

    for key, value in metrics.items():
        if key not in _SKIP:
            add(key, value, 0)
    return rows


def warnings_of(metrics: Mapping[str, Any]) -> list[str]:
    """The ``warnings`` list of a job's metrics (generation and evaluation metrics may carry one), plus the
    failed sanity checks of an evaluation."""
    found = [str(w) for w in metrics.get("warnings") or [] if w]
    sanity = metrics.get("sanity")
    if isinstance(sanity, Mapping):
        found += [f"sanity check {name} failed" for name, verdict in sanity.items() if verdict == "fail"]
    return found


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def images(names: Iterable[str]) -> list[str]:
    """Artifacts a browser can show as images, the preview grid first."""
    shown = [n for n in names if n.lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".webp"))]
    return sorted(shown, key=lambda n: (n != "preview.png", n))


def sparkline(points: Any, key: str = "loss", *, width: int = 900, height: int = 160) -> str | None:
    """An inline SVG line of ``key`` over ``step`` for a training job's ``steps`` curve (numbers only go
    into the markup), or None when there are fewer than two points."""
    if not isinstance(points, list):
        return None
    pts = [(float(p["step"]), float(p[key])) for p in points
           if isinstance(p, Mapping) and isinstance(p.get("step"), (int, float))
           and isinstance(p.get(key), (int, float)) and not isinstance(p.get(key), bool)]
    if len(pts) < 2:
        return None
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    pad_l, pad_b, pad_t = 56, 24, 8
    w, h = width - pad_l - 8, height - pad_b - pad_t

    def sx(x: float) -> float:
        return pad_l + (x - x0) / ((x1 - x0) or 1) * w

    def sy(y: float) -> float:
        return pad_t + (1 - (y - y0) / ((y1 - y0) or 1)) * h

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    return (f'<svg class="spark" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="training {key} per step, from {ys[0]:.4g} at step {xs[0]:.0f} to {ys[-1]:.4g} at '
            f'step {xs[-1]:.0f}">'
            f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{width - 8}" y2="{pad_t + h}" stroke="#8c959f"/>'
            f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#8c959f"/>'
            f'<text x="{pad_l - 6}" y="{pad_t + 10}" text-anchor="end" font-size="12" fill="#57606a">{y1:.3g}'
            f'</text><text x="{pad_l - 6}" y="{pad_t + h}" text-anchor="end" font-size="12" fill="#57606a">'
            f'{y0:.3g}</text><text x="{pad_l}" y="{height - 6}" font-size="12" fill="#57606a">step {x0:.0f}'
            f'</text><text x="{width - 8}" y="{height - 6}" text-anchor="end" font-size="12" fill="#57606a">'
            f'step {x1:.0f}</text><polyline points="{line}" fill="none" stroke="#0b57d0" stroke-width="2" '
            'stroke-linejoin="round"/></svg>')


def history_table(metrics: Mapping[str, Any], limit: int = 60) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of a training job's per-epoch history (the last ``limit`` epochs)."""
    history = [r for r in metrics.get("history") or [] if isinstance(r, Mapping)]
    if not history:
        return [], []
    columns = list(dict.fromkeys(k for r in history for k in r))
    return columns, [[number(r.get(c)) for c in columns] for r in history[-limit:]]
