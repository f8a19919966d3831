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


def _run_benchmark(script: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_ddim_vs_diffusers_benchmark_times_both_samplers_on_both_shapes(tmp_path: Path) -> None:
    out = tmp_path / "ddim.json"
    done = _run_benchmark("ddim_vs_diffusers.py", "--batch", "1", "--steps", "2", "--repeats", "1",
                          "--overhead-calls", "2", "--json", str(out))
    assert "diffusers/ours" in done.stdout
    report = json.loads(out.read_text())
    assert list(report) == ["benchmark", "args", "rows"] and report["benchmark"] == "ddim_vs_diffusers"
    assert report["args"]["clock"] == "cpu" and report["args"]["threads"] == "1"  # auto on a CPU: CPU time
    rows = report["rows"]
    assert [r["shape"] for r in rows] == ["digits", "cifar10"]
    for r in rows:
        assert r["ours_ms_per_image"] > 0 and r["diffusers_ms_per_image"] > 0
        assert r["ratio_diffusers_over_ours"] > 0
        assert r["null_model_ours_us_per_step"] > 0 and r["null_model_diffusers_us_per_step"] > 0
        assert r["max_abs_diff_x0"] < 1e-3  # the same samples: the comparison is apples to apples


def test_guided_floor_benchmark_reports_ratio_and_floor(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    done = _run_benchmark("guided_floor.py", "--batch", "2", "--steps", "3", "--repeats", "1",
                          "--unit-calls", "1", "--wrn-depth", "10", "--wrn-widen", "1", "--json", str(out))
    assert "ratio/floor" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["shape"] for r in rows] == ["digits", "cifar10"]
    for r in rows:
        assert min(r["unet_forward_ms"], r["feature_fwd_bwd_ms"], r["unguided_ms_per_image"],
                   r["guided_ms_per_image"]) > 0
        assert r["floor"] > 1 and r["ratio"] > 0 and r["ratio_over_floor"] > 0


def test_trades_step_benchmark_compares_the_trainer_with_a_plain_loop(tmp_path: Path) -> None:
    out = tmp_path / "trades.json"
    done = _run_benchmark("trades_step.py", "--batch", "4", "--train-steps", "2", "--pgd-steps", "2",
                          "--repeats", "1", "--wrn-depth", "10", "--wrn-widen", "1", "--json", str(out))
    assert "ours/plain" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["shape"] for r in rows] == ["digits", "cifar10"]
    for r in rows:
        assert min(r["ours_images_per_s"], r["plain_images_per_s"], r["ours_step_fns_images_per_s"]) > 0
        assert r["ratio_ours_over_plain"] > 0


def test_throughput_benchmark_reports_every_configuration(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    done = _run_benchmark("throughput.py", "--batch-size", "1", "--steps", "4", "--repeats", "1",
                          "--wrn-depth", "10", "--wrn-widen", "1", "--json", str(out))
    assert "x vanilla" in done.stdout
    report = json.loads(out.read_text())
    assert list(report) == ["benchmark", "classifier", "batch", "count", "args", "rows"]
    assert (report["benchmark"], report["batch"], report["count"]) == ("throughput", 1, 1)
    rows = report["rows"]
    assert [r["config"] for r in rows] == ["vanilla DDIM", "HNM", "InfoNCE", "HNM + embedding head",
                                           "HNM, window t >= 400"]
    assert rows[0]["ratio_to_vanilla"] == 1.0
    assert all(r["images_per_s"] > 0 and r["ms_per_image"] > 0 and r["ratio_to_vanilla"] > 0 for r in rows)


def test_gpu_script_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_api_submit_benchmark_compares_the_route_with_its_floor(tmp_path: Path) -> None:
    out = tmp_path / "api_submit.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "api_submit.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x floor" in done.stdout
    levels = json.loads(out.read_text())["levels"]
    assert [r["clients"] for r in levels] == [1, 10, 50]
    for r in levels:
        for side in ("ours", "floor"):
            assert r[side]["errors"] == 0 and r[side]["n"] > 0
            assert 0 < r[side]["p50_ms"] <= r[side]["p99_ms"]
        assert r["p99_ratio"] > 0


def test_fanout_benchmark_runs_one_job_on_one_then_two_workers(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fanout.py"), "--count", "8", "--shard-size", "2",
         "--steps", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "CDP_REDIS_URL"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [run["workers"] for run in result["runs"]] == [1, 2]
    for run in result["runs"]:  # every shard of the job ran (a shard may run twice only after a loss)
        assert sum(w["shards"] for w in run["per_worker"].values()) >= 4
        assert len(run["per_worker"]) == run["workers"]
        assert {"submit_s", "to_first_shard_s", "shards_s", "to_finalize_s", "finalize_s"} <= run.keys()
    # the model cache: one worker ran 4 shards and loaded the diffusion model and the classifier once each
    (alone,) = result["runs"][0]["model_loads"].values()
    assert alone["count"] == 2
    assert result["speedup_2_workers"] > 0 and "ratio" in done.stdout
