"""``cdp experiment``: run an experiment job on a running service and print its comparison.

    cdp experiment --url http://127.0.0.1:8000 --spec experiment.json [--token T] [--json result.json]

The spec is the body of ``POST /jobs/experiment`` (arms, seeds, TRADES and evaluation settings; see README).
Follows the job with a progress bar, then prints one row per arm: the mean over seeds with its 95 %
interval for each accuracy, and the paired difference of robust accuracy (the per-sample worst case over
the attacks) to the reference arm. The full report is the job's ``report.html`` artifact, which the
console shows at ``/ui/jobs/<id>/report``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from core.training.attacks import ATTACK_TABLE, CLEAN_METRIC, WORST_METRIC

TERMINAL = ("succeeded", "failed", "canceled")
# clean, every attack of the table (by its report label), the worst case
COLUMNS = ((CLEAN_METRIC, "clean"), *((attack.metric, attack.label) for attack in ATTACK_TABLE.values()),
           (WORST_METRIC, "robust (worst)"))


def _cell(stat: dict[str, Any] | None, *, signed: bool = False) -> str:
    """"mean [lo, hi]" in percent (with a sign for differences); "-" when there is no value."""
    if not stat or stat.get("mean") is None:
        return "-"
    form = "{:+.1f}" if signed else "{:.1f}"
    text = form.format(100 * stat["mean"])
    if stat.get("ci95"):
        lo, hi = stat["ci95"]
        text += f" [{form.format(100 * lo)}, {form.format(100 * hi)}]"
    return text


def format_result(result: dict[str, Any]) -> str:
    """The comparison table of an experiment's metrics (percent; intervals are 95 % Student t)."""
    arms = result["arms"]
    present = [(key, label) for key, label in COLUMNS
               if any(arms[a].get(key) for a in arms)]
    reference = result["reference"]
    header = ["arm", "seeds", *[label for _, label in present], f"robust - {reference}"]
    rows = []
    for name, stats in arms.items():
        n = max((s.get("n", 0) for s in stats.values() if isinstance(s, dict)), default=0)
        paired = result.get("paired", {}).get(name, {}).get("worst_acc")
        rows.append([name, str(n), *[_cell(stats.get(key)) for key, _ in present],
                     "(reference)" if name == reference else _cell(paired, signed=True)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"accuracy in %, mean over seeds [{result.get('interval', '95% interval')}]; robust = "
                 "correct under every attack; the last column is paired over the same seeds")
    return "\n".join(lines)


def follow(http: httpx.Client, job: dict[str, Any], *, bar: tqdm | None = None, poll_s: float = 1.0,
           on_poll: Any = None) -> dict[str, Any]:
    """Follow the job until it is terminal, advancing ``bar`` (0..100) with its progress: each request
    long-polls up to ``poll_s`` (``?wait=``), so the answer comes the moment the job finishes."""
    while job["status"] not in TERMINAL:
        if on_poll is not None:
            on_poll()
        asked = time.monotonic()
        reply = http.get(f"/jobs/{job['id']}", params={"wait": poll_s})
        reply.raise_for_status()
        job = reply.json()
        if job["status"] not in TERMINAL:  # a server whose CDP_MAX_WAIT_SECONDS is below poll_s
            time.sleep(max(0.0, poll_s - (time.monotonic() - asked)))
        if bar is not None:
            bar.n = round(100 * job["progress"]["fraction"], 1)
            bar.set_description(job["progress"]["message"] or job["status"])
            bar.refresh()
    return job


def run(args: argparse.Namespace) -> int:
    spec = json.loads(Path(args.spec).read_text())
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(base_url=args.url, timeout=60, headers=headers) as http:
        reply = http.post("/jobs/experiment", json=spec)
        if reply.status_code != 202:
            print(f"cdp experiment: the service refused the spec ({reply.status_code}): {reply.text}",
                  file=sys.stderr)
            return 2
        job = reply.json()
        print(f"experiment job {job['id']}", file=sys.stderr)
        with tqdm(total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {n:.0f}/100% "
                  "[{elapsed}<{remaining}]") as bar:
            job = follow(http, job, bar=bar, poll_s=args.poll)
        if job["status"] != "succeeded":
            print(f"cdp experiment: job {job['id']} {job['status']}: {job['error']}", file=sys.stderr)
            return 1
        result = http.get(f"/jobs/{job['id']}/metrics").json()["metrics"]
    print(format_result(result))
    base = args.url.rstrip("/")
    print(f"report: {base}/ui/jobs/{job['id']}/report (in a browser; the file: "
          f"{base}/jobs/{job['id']}/artifacts/report.html)", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("experiment", help="run an experiment job on a service, print the table",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default: cdp up's)")
    parser.add_argument("--spec", required=True, help="JSON file: the body of POST /jobs/experiment")
    parser.add_argument("--token", default=None, help="bearer token, when the service has tokens")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between status polls")
    parser.add_argument("--json", default=None, help="also write the result (per-arm statistics) here")
    parser.set_defaults(func=run)
