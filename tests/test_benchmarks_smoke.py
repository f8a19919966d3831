"""The benchmarks, in a reduced form, so that they keep working (timings are reported, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_guidance_cost_benchmark_reports_every_configuration_against_vanilla(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "guidance_cost.py"), "--count", "2", "--batch-size", "2",
         "--steps", "4", "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows][0] == "vanilla DDIM"
    assert {r["config"] for r in rows} >= {"InfoNCE", "HNM", "HNM + embedding head", "HNM, window t >= 400"}
    assert rows[0]["ratio_to_vanilla"] == 1.0
    assert all(r["ms_per_image"] > 0 for r in rows)
    assert "x vanilla" in done.stdout
