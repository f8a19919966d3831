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


def last_epoch(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    history = metrics.get("history")
    if not isinstance(history, list) or not history or not isinstance(history[-1], Mapping):
        return []
    return [(k, number(v)) for k, v in history[-1].items()]


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
