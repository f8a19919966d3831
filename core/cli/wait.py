"""``cdp wait``: follow a job (or a pipeline) of a running service to its end, with a progress bar.

    cdp wait <job id> [--url http://127.0.0.1:8000] [--token T] [--timeout S] [--pipeline] [--json]

Long-polls ``GET /jobs/<id>?wait=S`` (``/pipelines/<id>`` with ``--pipeline``): the server answers as soon
as the job is finished, or after at most ``CDP_MAX_WAIT_SECONDS``, and the bar moves with each answer.
Exit status: 0 when it succeeded, 1 when it failed or was canceled (its error on stderr), 2 when the
service refused or ``--timeout`` passed first. ``--json`` prints the final record on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx
from tqdm import tqdm

TERMINAL = ("succeeded", "failed", "canceled")
POLL_S = 30.0  # the wait asked of each request (the server may answer sooner, at its own bound)


def wait_for(http: httpx.Client, path: str, *, timeout: float | None = None, bar: tqdm | None = None,
             poll_s: float = POLL_S) -> dict[str, Any]:
    """Long-poll ``path`` (``/jobs/<id>`` or ``/pipelines/<id>``) until it is finished or ``timeout``
    seconds have passed; returns the last record read (``TimeoutError`` past the timeout)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic()))
        asked = time.monotonic()
        reply = http.get(path, params={"wait": round(wait, 3)}, timeout=wait + 30)
        reply.raise_for_status()
        record = reply.json()
        if bar is not None:
            progress = record.get("progress") or {}
            bar.n = round(100 * float(progress.get("fraction", 0.0)), 1)
            bar.set_description(progress.get("message") or progress.get("stage") or record["status"])
            bar.refresh()
        if record["status"] in TERMINAL:
            return record
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{path} is still {record['status']} after {timeout:g} s")
        if time.monotonic() - asked < 1.0:  # the server waits less than asked (CDP_MAX_WAIT_SECONDS): pace
            time.sleep(1.0)


def run(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    path = f"/{'pipelines' if args.pipeline else 'jobs'}/{args.job_id}"
    with httpx.Client(base_url=args.url, headers=headers) as http, \
            tqdm(total=100, unit="%", file=sys.stderr, disable=args.quiet,
                 bar_format="{l_bar}{bar}| {n:.0f}/100% [{elapsed}]") as bar:
        try:
            record = wait_for(http, path, timeout=args.timeout, bar=bar)
        except httpx.HTTPStatusError as exc:
            bar.close()
            print(f"cdp wait: {path}: HTTP {exc.response.status_code}: {exc.response.text[:300]}",
                  file=sys.stderr)
            return 2
        except (httpx.HTTPError, TimeoutError) as exc:
            bar.close()
            print(f"cdp wait: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(record, indent=1))
    if record["status"] != "succeeded":
        print(f"cdp wait: {args.job_id} {record['status']}: {record.get('error')}", file=sys.stderr)
        return 1
    print(f"{args.job_id} succeeded", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("wait", help="follow a job of a service to its end (progress bar)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job_id", help="the job's (or with --pipeline the pipeline's) id")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default: cdp up's)")
    parser.add_argument("--token", default=None, help="API key, when the service has keys")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    parser.add_argument("--pipeline", action="store_true", help="the id is a pipeline's (POST /pipelines)")
    parser.add_argument("--json", action="store_true", help="print the final record on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
