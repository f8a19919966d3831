"""How long a generation job waits after its worker is killed: the embedded stack of ``cdp up`` with the
default lease and reconcile settings (unless overridden), kill -9 of the worker mid-shard, then the times
from the kill to (1) the supervisor restarting the worker, (2) the lost shard starting again, (3) the job
succeeding. Prints one JSON object as its last line.

    .venv/bin/python benchmarks/recovery.py                          # defaults: lease 30 s, reconcile 15 s
    .venv/bin/python benchmarks/recovery.py --lease-ttl 2 --lease-renew 0.5 --reconcile 1   # reduced (CI)

The models are a tiny untrained UNet and SmallCNN made on the spot: the point is the service's recovery,
not the images.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import make_tiny_models  # noqa: E402

from core.cli.up import EmbeddedStack  # noqa: E402
from core.jobs.embedded import free_port  # noqa: E402


def wait_for(what: str, predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lease-ttl", type=float, default=None, help="CDP_LEASE_TTL_S")
    parser.add_argument("--lease-renew", type=float, default=None, help="CDP_LEASE_RENEW_S")
    parser.add_argument("--reconcile", type=float, default=None, help="CDP_RECONCILE_INTERVAL_S")
    parser.add_argument("--steps", type=int, default=60, help="DDIM steps per image (a shard takes seconds)")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    env = {"CDP_SHARD_SIZE": "2", "CDP_DEVICE": "cpu"}
    for name, value in (("CDP_LEASE_TTL_S", args.lease_ttl), ("CDP_LEASE_RENEW_S", args.lease_renew),
                        ("CDP_RECONCILE_INTERVAL_S", args.reconcile)):
        if value is not None:
            env[name] = str(value)
    os.environ.pop("CDP_REDIS_URL", None)
    with tempfile.TemporaryDirectory(prefix="cdp-recovery-") as tmp:
        var = Path(tmp) / "var"
        make_tiny_models(var / "models")
        with EmbeddedStack(var=var, port=free_port(), env=env) as stack:
            http = httpx.Client(base_url=stack.base_url, timeout=30)
            job_id = http.post("/jobs/generate", json={
                "dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 8,
                "steps": args.steps, "schedule": "uniform", "batch_size": 8, "loss": "hnm", "lam": 10.0,
            }).json()["id"]
            log_path = var / "logs" / "worker.log"
            assert stack.redis is not None
            client = redis.Redis.from_url(stack.redis.url, decode_responses=True)

            def leased() -> list[str]:
                return [key.rsplit(":", 1)[-1] for key in client.scan_iter(f"cdp:lease:{job_id}:*")]

            # kill the worker the moment it holds the lease of a shard (after one shard is done)
            shards = var / "store" / "jobs" / job_id / "shards"
            wait_for("a first shard", lambda: shards.is_dir() and any(shards.glob("*.npz")), args.timeout)
            wait_for("a shard to be running", lambda: bool(leased()), args.timeout)
            unit = leased()[0]
            victim = stack.pid("worker")
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
            client.close()
            restarted = wait_for("the worker to be restarted",
                                 lambda: stack.pid("worker") not in (None, victim), args.timeout)
            again = re.compile(rf"job {job_id}: {unit} started \(attempt 2")
            written = shards / f"{unit.removeprefix('shard-')}.npz"
            # (a shard whose object landed in the instant before the kill is complete: nothing to rerun)
            wait_for(f"{unit} to start again", lambda: bool(again.search(log_path.read_text()))
                     or written.exists(), args.timeout)
            resumed = time.monotonic() if again.search(log_path.read_text()) else None
            job: dict = {}

            def finished() -> bool:
                nonlocal job
                job = http.get(f"/jobs/{job_id}").json()
                return job["status"] in ("succeeded", "failed", "canceled")

            done_at = wait_for("the job to finish", finished, args.timeout)
    from core.settings import Settings

    defaults = Settings()
    result = {
        "lease_ttl_s": args.lease_ttl or defaults.lease_ttl_s,
        "lease_renew_s": args.lease_renew or defaults.lease_renew_s,
        "reconcile_interval_s": args.reconcile or defaults.reconcile_interval_s,
        "status": job["status"], "unit": unit,
        "worker_restarted_after_s": round(restarted - killed, 2),
        "unit_restarted_after_s": None if resumed is None else round(resumed - killed, 2),
        "job_finished_after_s": round(done_at - killed, 2),
    }
    print(f"worker killed mid-{unit}: restarted after {result['worker_restarted_after_s']} s, the shard ran "
          f"again after {result['unit_restarted_after_s']} s (bound: lease {result['lease_ttl_s']} s + "
          f"reconcile {result['reconcile_interval_s']} s), job {job['status']} "
          f"{result['job_finished_after_s']} s after the kill")
    print(json.dumps(result))
    return 0 if job["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
