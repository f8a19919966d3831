"""Generation fan-out: one generation job on 1 worker, then the same job (same seed, a fresh stack) on 2
workers, each worker a solo-pool Celery process with one torch thread; prints the wall-time ratio and where
the job's serial time goes.

    .venv/bin/python benchmarks/fanout.py                    # loopback, 64 images, shards of 8
    .venv/bin/python benchmarks/fanout.py --hosts netns      # each worker on a host of its own (root)
    .venv/bin/python benchmarks/fanout.py --count 8 --shard-size 2 --steps 4 --json out.json   # reduced (CI)

``--hosts loopback``: the embedded stack of ``cdp up`` (every process on 127.0.0.1, the local store).
``--hosts netns``: Redis, moto's S3 server, the API and the control worker on one network namespace and each
worker on its own, over veth links (tests/netns_hosts.py), the store reached over the network.

The clock runs from the submission (after every worker reported ready) to the job succeeding. The phases,
from the workers' JSON logs: ``submit`` (the POST), ``to first shard`` (until a worker logs a shard
started), ``shards`` (first shard started to last shard written), ``to finalize`` (last shard written to the
finalize unit starting), ``finalize`` (to the job succeeding); ``busy`` is the share of the shard phase each
worker spent inside a shard, and ``model loads`` counts the loads per worker process (the model cache keeps
a loaded model for the next shards). The models are a tiny untrained UNet and SmallCNN: the point is how
shards spread over workers. The 1-minute load average before each run is printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import make_tiny_models  # noqa: E402

from core.jobs.embedded import free_port  # noqa: E402


def _events(log: Path) -> list[tuple[float, str]]:
    """(unix time, message) of every JSON line of a worker's log."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
                out.append((datetime.fromisoformat(record["ts"]).timestamp(), record["message"]))
            except (ValueError, KeyError):
                continue
    return out


def phases(logs: dict[str, Path], job_id: str, submitted: float, posted: float, finished: float) -> dict:
    """Where the job's time went, from the workers' logs (see the module docstring)."""
    starts, written, per_worker, loads, finalize = [], [], {}, {}, None
    for name, log in logs.items():
        events = _events(log)
        open_at: dict[str, float] = {}
        busy = 0.0
        shards = 0
        loads[name] = {"count": 0, "seconds": 0.0}
        for ts, message in events:
            if (m := re.match(rf"job {job_id}: shard-(\d+) started", message)) is not None:
                open_at[m.group(1)] = ts
                starts.append(ts)
                shards += 1
            elif (m := re.match(rf"job {job_id}: shard (\d+) written", message)) is not None:
                written.append(ts)
                busy += ts - open_at.pop(m.group(1), ts)
            elif message.startswith(f"job {job_id}: finalize started"):
                finalize = ts
            elif (m := re.match(r"loaded \w+ model \S+ in ([\d.]+) s", message)) and ts >= submitted:
                loads[name]["count"] += 1
                loads[name]["seconds"] = round(loads[name]["seconds"] + float(m.group(1)), 3)
        per_worker[name] = {"shards": shards, "busy_s": round(busy, 2)}
    first, last = min(starts), max(written)
    shard_phase = max(last - first, 1e-9)
    for info in per_worker.values():
        info["busy"] = round(info.pop("busy_s") / shard_phase, 3)
    fin = finalize if finalize is not None else last
    return {"submit_s": round(posted - submitted, 3), "to_first_shard_s": round(first - posted, 3),
            "shards_s": round(shard_phase, 2), "to_finalize_s": round(fin - last, 3),
            "finalize_s": round(finished - fin, 2), "per_worker": per_worker, "model_loads": loads}


def measure(base_url: str, logs: dict[str, Path], args: argparse.Namespace) -> dict:
    http = httpx.Client(base_url=base_url, timeout=30)
    load = os.getloadavg()[0]
    submitted, began = time.time(), time.monotonic()
    reply = http.post("/jobs/generate", json={
        "dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": args.count,
        "steps": args.steps, "schedule": "uniform", "batch_size": args.shard_size, "loss": "hnm",
        "lam": 10.0, "seed": 0,
    })
    posted = time.time()
    job_id = reply.json()["id"]
    while True:
        job = http.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            break
        if time.monotonic() - began > args.timeout:
            raise SystemExit(f"the job did not finish within {args.timeout:.0f} s")
        time.sleep(0.05)
    finished, seconds = time.time(), time.monotonic() - began
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job['status']}: {job.get('error')}")
    time.sleep(0.5)  # the last log lines
    return {"workers": len(logs), "seconds": round(seconds, 2), "load_avg_1min_before": round(load, 2),
            **phases(logs, job_id, submitted, posted, finished)}


def _wait_ready(logs: dict[str, Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() and "ready." in p.read_text(errors="replace") for p in logs.values()):
        if time.monotonic() > deadline:
            raise SystemExit("the workers did not get ready")
        time.sleep(0.2)  # every worker consuming before the clock starts


def run_loopback(workers: int, args: argparse.Namespace) -> dict:
    from core.cli.up import EmbeddedStack

    env = {"CDP_SHARD_SIZE": str(args.shard_size), "CDP_DEVICE": "cpu", "CDP_LOG_FORMAT": "json"}
    os.environ.pop("CDP_REDIS_URL", None)
    with tempfile.TemporaryDirectory(prefix="cdp-fanout-") as tmp:
        var = Path(tmp) / "var"
        make_tiny_models(var / "models")
        with EmbeddedStack(var=var, port=free_port(), env=env, workers=workers, worker_threads=1,
                           persist_redis=False) as stack:
            names = ["worker" if k == 0 else f"worker-{k + 1}" for k in range(workers)]
            logs = {name: var / "logs" / f"{name}.log" for name in names}
            _wait_ready(logs, args.timeout)
            return measure(stack.base_url, logs, args)


def run_netns(workers: int, args: argparse.Namespace) -> dict:
    from tests.netns_hosts import Hosts, start_service, why_not

    reason = why_not()
    if reason is not None:
        raise SystemExit(f"--hosts netns: {reason}")
    with tempfile.TemporaryDirectory(prefix="cdp-fanout-netns-") as tmp:
        var = Path(tmp)
        make_tiny_models(var / "models")
        hosts = Hosts(workers=workers).create()
        try:
            with hosts.inside():
                start_service(hosts, var, models=var / "models",
                              settings={"CDP_SHARD_SIZE": str(args.shard_size)})
                logs = {f"worker-{k + 1}": var / "logs" / f"worker-{k + 1}.log" for k in range(workers)}
                return measure("http://127.0.0.1:8000", logs, args)
        finally:
            hosts.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64, help="images in the job")
    parser.add_argument("--shard-size", type=int, default=8, help="CDP_SHARD_SIZE (and the batch size)")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps per image")
    parser.add_argument("--hosts", choices=["loopback", "netns", "both"], default="loopback")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()

    modes = ["loopback", "netns"] if args.hosts == "both" else [args.hosts]
    result: dict = {"count": args.count, "shard_size": args.shard_size, "steps": args.steps,
                    "cpus": os.cpu_count(), "modes": {}}
    for mode in modes:
        run = run_loopback if mode == "loopback" else run_netns
        one, two = run(1, args), run(2, args)
        speedup = round(one["seconds"] / two["seconds"], 3)
        result["modes"][mode] = {"runs": [one, two], "speedup_2_workers": speedup}
        for r in (one, two):
            shards = " + ".join(str(w["shards"]) for w in r["per_worker"].values())
            busy = " / ".join(f"{w['busy']:.0%}" for w in r["per_worker"].values())
            loads = " / ".join(str(w["count"]) for w in r["model_loads"].values())
            print(f"{mode} {r['workers']} worker(s): {r['seconds']} s (load {r['load_avg_1min_before']}) = "
                  f"submit {r['submit_s']} + to first shard {r['to_first_shard_s']} + shards {r['shards_s']} "
                  f"+ to finalize {r['to_finalize_s']} + finalize {r['finalize_s']}; shards {shards}, "
                  f"busy {busy}, model loads {loads}")
        print(f"{mode}: ratio {speedup}x")
    if len(modes) == 1:  # the single-mode shape of earlier reports
        result.update(result["modes"][modes[0]])
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
