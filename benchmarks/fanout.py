"""Generation fan-out: one generation job on the embedded stack of ``cdp up`` with 1 worker, then the same job
(same seed, a fresh stack) with 2 workers, each worker with one torch thread; prints the wall-time ratio.

    .venv/bin/python benchmarks/fanout.py                                  # 8 shards of 8 images, 100 steps
    .venv/bin/python benchmarks/fanout.py --count 8 --shard-size 2 --steps 4 --json out.json   # reduced (CI)

The time runs from the submission to the job succeeding (shards, then the finalize step). The models are
a tiny untrained UNet and SmallCNN made on the spot: the point is how shards spread over workers. The
machine's 1-minute load average before each run is printed next to the timings, since other work on the
machine depresses the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import make_tiny_models  # noqa: E402

from core.cli.up import EmbeddedStack  # noqa: E402
from core.jobs.embedded import free_port  # noqa: E402


def run_job(workers: int, args: argparse.Namespace) -> dict:
    """Seconds from submission to success of one generation job on a fresh stack with ``workers``."""
    env = {"CDP_SHARD_SIZE": str(args.shard_size), "CDP_DEVICE": "cpu"}
    os.environ.pop("CDP_REDIS_URL", None)
    with tempfile.TemporaryDirectory(prefix="cdp-fanout-") as tmp:
        var = Path(tmp) / "var"
        make_tiny_models(var / "models")
        with EmbeddedStack(var=var, port=free_port(), env=env, workers=workers, worker_threads=1,
                           persist_redis=False) as stack:
            http = httpx.Client(base_url=stack.base_url, timeout=30)
            names = ["worker" if k == 0 else f"worker-{k + 1}" for k in range(workers)]
            deadline = time.monotonic() + args.timeout
            while not all("ready." in (var / "logs" / f"{name}.log").read_text(errors="replace")
                          for name in names if (var / "logs" / f"{name}.log").exists()) \
                    or not all((var / "logs" / f"{name}.log").exists() for name in names):
                if time.monotonic() > deadline:
                    raise SystemExit("the workers did not get ready")
                time.sleep(0.2)  # every worker consuming before the clock starts
            load = os.getloadavg()[0]
            began = time.monotonic()
            job_id = http.post("/jobs/generate", json={
                "dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": args.count,
                "steps": args.steps, "schedule": "uniform", "batch_size": args.shard_size, "loss": "hnm",
                "lam": 10.0, "seed": 0,
            }).json()["id"]
            while True:
                job = http.get(f"/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    break
                if time.monotonic() - began > args.timeout:
                    raise SystemExit(f"the job did not finish within {args.timeout:.0f} s")
                time.sleep(0.1)
            seconds = time.monotonic() - began
            # which worker ran which shard, from the workers' logs ("job <id>: shard-<k> started")
            per_worker = {}
            for name in names:
                text = (var / "logs" / f"{name}.log").read_text(errors="replace")
                per_worker[name] = len(re.findall(rf"job {job_id}: shard-\d+ started", text))
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job['status']}: {job.get('error')}")
    return {"workers": workers, "seconds": round(seconds, 2), "load_avg_1min_before": round(load, 2),
            "shard_starts_per_worker": per_worker}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64, help="images in the job")
    parser.add_argument("--shard-size", type=int, default=8, help="CDP_SHARD_SIZE (and the batch size)")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps per image")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()

    one = run_job(1, args)
    two = run_job(2, args)
    result = {"count": args.count, "shard_size": args.shard_size, "steps": args.steps,
              "cpus": os.cpu_count(), "runs": [one, two],
              "speedup_2_workers": round(one["seconds"] / two["seconds"], 3)}
    print(f"1 worker: {one['seconds']} s (load {one['load_avg_1min_before']}); 2 workers: {two['seconds']} s "
          f"(load {two['load_avg_1min_before']}, shards {two['shard_starts_per_worker']}); "
          f"ratio {result['speedup_2_workers']}x")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
