"""Statistics over seeds of an experiment's runs (:func:`summarize`).

An experiment compares *arms* (for example "real only", "+ vanilla DDIM", "+ Contrastive-DP") over seeds: for
each (arm, seed) one TRADES model is trained and evaluated. Per arm and metric: the mean, the sample standard
deviation and the Student-t 95 % interval of the mean over seeds; for each non-reference arm the paired
difference to the reference over the seeds both arms have, with its paired-t interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from core.training import attacks

DEFAULT_METRICS: tuple[str, ...] = attacks.REPORT_METRICS  # from the attack table, as the experiment job's
INTERVAL = "95% Student t"
ROBUST_METRIC = attacks.WORST_METRIC
METRIC_LABELS: dict[str, str] = attacks.METRIC_LABELS
_RESERVED = ("synthetic_share",)


def describe(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std (ddof=1) and the two-sided 95 % Student-t interval ``[lo, hi]`` of the mean; std and
    interval are None with fewer than two values. The one place the project computes an interval over seeds:
    the experiment reports and the scripts under experiments/ all use it."""
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
                entry[name] = {**describe(vals), "values": vals, "seeds": seeds}
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
                paired[arm][name] = {**describe(diffs), "values": diffs, "seeds": seeds,
                                     "method": "paired t"}  # fmt: skip

    return {"reference": reference, "interval": INTERVAL, "metrics": present, "arms": summary_arms,
            "paired": paired}  # fmt: skip
