"""The sample-efficiency study's report (experiments/mnist5k_counts.py): runs of different replicates (a new
training of the generator, another machine) are never paired with each other, recorded rows of other
replicates survive a report from a new work directory, and a finished run replaces its own recorded row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import mnist5k_counts as counts  # noqa: E402


def row(arm: str, seed: int, worst: float, replicate: str | None = None) -> dict:
    out = {"arm": arm, "seed": seed, "metrics": {"worst_acc": worst, "clean_acc": 0.9}}
    if replicate is not None:
        out["replicate"] = replicate
    return out


def test_pairs_stay_inside_a_replicate() -> None:
    runs = [
        row("a", 0, 0.70, "1"), row("b", 0, 0.60, "1"),
        row("a", 1, 0.72, "1"), row("b", 1, 0.61, "1"),
        row("a", 0, 0.80, "2"), row("b", 1, 0.50, "2"),  # seed 0 of b and seed 1 of a missing in "2"
        row("a", 2, 0.75, "2"), row("b", 2, 0.70, "2"),
    ]
    got = counts.paired(runs, "a", "b")
    assert got is not None
    assert [(p["replicate"], p["seed"]) for p in got["pairs"]] == [("1", 0), ("1", 1), ("2", 2)]
    assert got["n"] == 3
    assert got["mean"] == pytest.approx((0.10 + 0.11 + 0.05) / 3)
    assert got["by_replicate"]["1"]["n"] == 2 and got["by_replicate"]["2"]["n"] == 1
    assert got["by_replicate"]["2"]["ci95"] is None  # one pair: no interval
    assert counts.paired(runs, "a", "missing arm") is None


def test_rows_without_a_label_are_replicate_one() -> None:
    runs = [row("a", 0, 0.7), row("b", 0, 0.6, "1"), row("b", 0, 0.1, "2")]
    got = counts.paired(runs, "a", "b")
    assert got is not None and [p["replicate"] for p in got["pairs"]] == ["1"]
    assert got["mean"] == pytest.approx(0.1)


def test_recorded_rows_of_other_replicates_are_kept_and_own_rows_replaced(tmp_path: Path) -> None:
    recorded = tmp_path / "counts.json"
    recorded.write_text(json.dumps({"runs": [
        row("real only", 0, 0.69), row("vanilla N=500", 0, 0.72),          # replicate 1 (unlabelled)
        row("real only", 0, 0.50, "2"), row("vanilla N=500", 1, 0.71, "2"),  # replicate 2
    ]}))
    finished = [row("real only", 0, 0.68, "2")]  # replicate 2's seed 0, finished again under --work
    kept = counts.keep_recorded(finished, recorded)
    got = {(counts.replicate_of(r), r["arm"], r["seed"]): r["metrics"]["worst_acc"] for r in kept}
    assert got == {
        ("1", "real only", 0): 0.69,
        ("1", "vanilla N=500", 0): 0.72,
        ("2", "real only", 0): 0.68,  # the finished run, not the recorded 0.50
        ("2", "vanilla N=500", 1): 0.71,
    }
    assert counts.keep_recorded(finished, tmp_path / "absent.json") == finished


def test_the_summary_pools_runs_and_keeps_each_replicate() -> None:
    runs = [row("a", 0, 0.70, "1"), row("a", 1, 0.74, "1"), row("a", 0, 0.60, "2")]
    s = counts.arm_summary(runs, "a")["worst_acc"]
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.68)
    assert s["runs"] == ["1/0", "1/1", "2/0"]
    assert s["by_replicate"]["1"]["mean"] == pytest.approx(0.72) and s["by_replicate"]["2"]["n"] == 1
