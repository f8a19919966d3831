"""Latency of ``POST /jobs/generate`` at 1, 10 and 50 concurrent clients, against a floor.

Starts a private redis-server and two uvicorn servers on free loopback ports, with the same settings (local
store under a temporary directory, that Redis, ``CDP_SHARD_SIZE=1000``) and the same uvicorn options: the
real app (``api.app:create_app``) and the floor (``benchmarks/api_floor.py``: a bare route that only sends
one Celery message by name). No worker runs: the messages queue up. Each client is a keep-alive connection
sending one request after the other; per repeat and per level the two servers take turns (the order
alternates between repeats), so both see the same machine. Prints p50/p99 of each, the p99 ratio
ours/floor (the goal: within 2x), requests per second and errors; ``--json OUT`` writes them too.

    .venv/bin/python benchmarks/api_submit.py            # 200 / 500 / 1000 requests per level, 3 repeats
    .venv/bin/python benchmarks/api_submit.py --quick --json out.json      # reduced (CI)

Timings on a shared machine are noisy: compare the ratios, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.jobs.embedded import RedisServer, free_port, stop_process, wait_http_ready  # noqa: E402

BODY = {"dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 64, "steps": 10}
SERVERS = {"ours": "api.app:create_app", "floor": "benchmarks.api_floor:create_app"}
LEVELS = (1, 10, 50)
FULL_REQUESTS = {1: 200, 10: 500, 50: 1000}
QUICK_REQUESTS = {1: 30, 10: 60, 50: 150}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def server_env(tmp: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    env.update({
        "CDP_REDIS_URL": redis_url, "CDP_STORE_BACKEND": "local", "CDP_STORE_ROOT": str(tmp / "store"),
        "CDP_MODEL_DIR": str(tmp / "models"), "CDP_WORK_DIR": str(tmp / "work"),
        "CDP_DATA_ROOT": str(tmp / "data"), "CDP_SHARD_SIZE": "1000",
        # thousands of queued jobs of one caller: quotas far above them (the path measured is the submission)
        "CDP_QUOTA_CONCURRENT_JOBS": "1000000", "CDP_QUOTA_IMAGES_PER_DAY": "1000000000",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    })
    return env


class Server:
    """One uvicorn process; ``stop`` terminates it (then kills it after 10 s)."""

    def __init__(self, name: str, factory: str, env: dict[str, str], logs: Path, workers: int) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = logs / f"{name}.log"
        args = [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", "warning"]
        if workers > 1:
            args += ["--workers", str(workers)]
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        if wait_http_ready(self.url, timeout=timeout, alive=self._check_alive, interval=0.2):
            return
        raise RuntimeError(f"{self.name} did not become ready within {timeout:.0f} s:\n{self.log_tail()}")

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


async def run_batch(url: str, clients: int, total: int) -> dict[str, Any]:
    """``total`` requests from ``clients`` concurrent keep-alive connections (each warmed up by one request
    that is not counted). Returns the latencies (ms), errors and wall time."""
    latencies: list[float] = []
    errors: list[str] = []
    remaining = total
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    conns = [httpx.AsyncClient(base_url=url, timeout=60, limits=limits) for _ in range(clients)]

    async def one(client: httpx.AsyncClient, record: bool) -> None:
        started = time.perf_counter()
        try:
            response = await client.post("/jobs/generate", json=BODY)
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 202:
            errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
        elif record:
            latencies.append(elapsed)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one(client, record=True)

    try:
        await asyncio.gather(*(one(c, record=False) for c in conns))
        errors.clear()  # a failing warm-up shows up again in the counted requests
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for c in conns))
        wall = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.aclose() for c in conns))
    return {"latencies_ms": latencies, "errors": errors, "wall_s": wall, "requests": total}


def summarize(batches: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for b in batches for x in b["latencies_ms"]]
    wall = sum(b["wall_s"] for b in batches)
    return {
        "n": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "mean_ms": round(sum(latencies) / len(latencies), 3) if latencies else float("nan"),
        "p99_ms_per_repeat": [round(percentile(b["latencies_ms"], 99), 3) for b in batches],
        "requests_per_s": round(sum(b["requests"] for b in batches) / wall, 1) if wall else 0.0,
        "errors": sum(len(b["errors"]) for b in batches),
        "first_errors": [e for b in batches for e in b["errors"]][:3],
    }


def measure(urls: dict[str, str], requests: dict[int, int], repeats: int) -> list[dict[str, Any]]:
    batches: dict[tuple[str, int], list[dict[str, Any]]] = {(s, c): [] for s in urls for c in requests}
    names = list(urls)
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for clients, total in requests.items():
            for name in order:
                batch = asyncio.run(run_batch(urls[name], clients, total))
                batches[(name, clients)].append(batch)
                print(f"  repeat {repeat + 1}/{repeats}, {clients:>2} clients, {name:<5}: "
                      f"p50 {percentile(batch['latencies_ms'], 50):7.1f} ms, "
                      f"p99 {percentile(batch['latencies_ms'], 99):7.1f} ms, errors {len(batch['errors'])}",
                      file=sys.stderr, flush=True)
    rows = []
    for clients in requests:
        ours, floor = summarize(batches[("ours", clients)]), summarize(batches[("floor", clients)])
        per_repeat = sorted(o / f for o, f in zip(ours["p99_ms_per_repeat"], floor["p99_ms_per_repeat"],
                                                  strict=True) if f > 0)
        rows.append({"clients": clients, "ours": ours, "floor": floor,
                     "p99_ratio": round(ours["p99_ms"] / floor["p99_ms"], 2),
                     "p50_ratio": round(ours["p50_ms"] / floor["p50_ms"], 2),
                     "p99_ratio_median_of_repeats": round(per_repeat[len(per_repeat) // 2], 2)})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("clients", "ours p50", "ours p99", "floor p50", "floor p99", "p99 ratio", "ours req/s",
            "floor req/s", "errors")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(" --- " for _ in head) + "|")
    for r in rows:
        o, f = r["ours"], r["floor"]
        cells = (str(r["clients"]), f"{o['p50_ms']:.1f} ms", f"{o['p99_ms']:.1f} ms", f"{f['p50_ms']:.1f} ms",
                 f"{f['p99_ms']:.1f} ms", f"{r['p99_ratio']:.2f}x floor", f"{o['requests_per_s']:.0f}",
                 f"{f['requests_per_s']:.0f}", f"{o['errors']} / {f['errors']}")
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        verdict = "within" if r["p99_ratio"] <= 2 else "above"
        print(f"{r['clients']:>2} clients: p99 ours/floor = {r['p99_ratio']:.2f}x floor "
              f"(median over repeats {r['p99_ratio_median_of_repeats']:.2f}x; {verdict} the 2x goal)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests, one repeat (CI)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--requests", type=float, default=1.0, help="scale the requests per level")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn --workers of both servers")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    base = QUICK_REQUESTS if args.quick else FULL_REQUESTS
    requests = {c: max(1, int(n * args.requests)) for c, n in base.items()}
    repeats = args.repeats or (1 if args.quick else 3)

    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="cdp-api-submit-") as tmp_name:
        tmp = Path(tmp_name)
        for sub in ("store", "work", "data", "logs", "models/unet-t", "models/cnn-t"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        with RedisServer(workdir=tmp / "redis") as redis_server:
            try:
                env = server_env(tmp, redis_server.url)
                for name, factory in SERVERS.items():
                    servers.append(Server(name, factory, env, tmp / "logs", args.workers))
                for server in servers:
                    server.wait_ready()
                print(f"POST /jobs/generate, {json.dumps(BODY)}; requests per level and server per repeat "
                      f"{requests}, {repeats} repeat(s), uvicorn workers {args.workers}", flush=True)
                rows = measure({s.name: s.url for s in servers}, requests, repeats)
            finally:
                for server in servers:
                    server.stop()
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"body": BODY, "requests": requests, "repeats": repeats,
                                         "workers": args.workers, "levels": rows}, indent=1))
    return 0 if all(r["ours"]["errors"] == 0 and r["floor"]["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
