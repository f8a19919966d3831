"""`cdp experiment`'s table: one row per arm, intervals in percent, the paired difference to the reference."""

from __future__ import annotations

from core.cli.experiment import format_result


def test_the_table_shows_every_arm_with_intervals_and_the_paired_difference() -> None:
    result = {
        "reference": "real only", "interval": "95% Student t",
        "arms": {
            "real only": {"clean_acc": {"mean": 0.9, "ci95": [0.88, 0.92], "n": 3},
                          "worst_acc": {"mean": 0.5, "ci95": [0.45, 0.55], "n": 3}, "synthetic_share": 0.0},
            "+ cdp": {"clean_acc": {"mean": 0.91, "ci95": [0.9, 0.92], "n": 3},
                      "worst_acc": {"mean": 0.56, "ci95": [0.5, 0.62], "n": 3}, "synthetic_share": 0.5},
        },
        "paired": {"+ cdp": {"worst_acc": {"mean": 0.06, "ci95": [0.01, 0.11], "n": 3}}},
    }
    lines = format_result(result).splitlines()
    assert lines[0].split()[:2] == ["arm", "seeds"] and "robust (worst)" in lines[0]
    assert "PGD-CE" not in lines[0]  # metrics that no arm has are left out
    real = next(line for line in lines if line.startswith("real only"))
    cdp = next(line for line in lines if line.startswith("+ cdp"))
    assert "50.0 [45.0, 55.0]" in real and "(reference)" in real
    assert "56.0 [50.0, 62.0]" in cdp and "+6.0 [+1.0, +11.0]" in cdp
