"""The benchmarks, in a reduced form, so that they keep working (timings are reported, never asserted)."""

from __future__ import annotations

import json
import os
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


def test_recovery_benchmark_measures_a_killed_worker_in_a_reduced_form() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "recovery.py"), "--lease-ttl", "2", "--lease-renew", "0.5",
         "--reconcile", "1", "--steps", "30", "--timeout", "120"],
        capture_output=True, text=True, timeout=240, check=False, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "CDP_REDIS_URL"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "succeeded" and result["lease_ttl_s"] == 2.0
    assert 0 < result["worker_restarted_after_s"] <= result["job_finished_after_s"]
    if result["unit_restarted_after_s"] is not None:  # None: the shard had landed just before the kill
        assert 0 < result["unit_restarted_after_s"] <= result["job_finished_after_s"]
