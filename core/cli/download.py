"""``cdp download``: fetch a job's artifact (by default a generation job's ``dataset.npz``), with a bar.

    cdp download <job id> [--out dataset.npz] [--artifact dataset.npz] [--url URL] [--token T]

The file is written under a temporary name beside ``--out`` and renamed into place once complete, and its
sha256 is checked against the job's artifact list when the job has one; an interrupted download leaves no
partial file behind. Follows the presigned URL on MinIO, the API's download route otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import httpx
from tqdm import tqdm

from core.specs.common import JOB_ID_PATTERN


def download(http: httpx.Client, job_id: str, out: Path, *, artifact: str = "dataset.npz",
             quiet: bool = False) -> Path:
    """Download ``artifact`` of job ``job_id`` to ``out``; ``ValueError`` with the service's reason."""
    listing = http.get(f"/jobs/{job_id}/artifacts")
    if listing.status_code != 200:
        raise ValueError(f"job {job_id}: {_reason(listing)}")
    entry = next((a for a in listing.json()["items"] if a["name"] == artifact), None)
    if entry is None:
        raise ValueError(f"job {job_id} has no artifact {artifact!r} (is it a succeeded generation job?)")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.part-{os.getpid()}")
    digest = hashlib.sha256()
    url = entry["url"]
    # a presigned URL (MinIO) carries its own signature: fetched without the API key, which S3 would refuse
    # beside it; the API's own download route (local store) with it
    own = not url.startswith(("http://", "https://")) or httpx.URL(url).host == http.base_url.host
    fetch = http if own else httpx.Client(timeout=300, follow_redirects=True)
    try:
        with fetch.stream("GET", url) as reply:
            if reply.status_code != 200:
                reply.read()
                raise ValueError(f"job {job_id}: {artifact}: {_reason(reply)}")
            total = int(reply.headers.get("content-length") or entry["size"] or 0) or None
            with open(partial, "wb") as fh, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                                 desc=artifact, file=sys.stderr, disable=quiet) as bar:
                for chunk in reply.iter_bytes(1 << 20):
                    fh.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if entry.get("sha256") and digest.hexdigest() != entry["sha256"]:
            raise ValueError(f"job {job_id}: {artifact}: sha256 mismatch (got {digest.hexdigest()})")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
        if fetch is not http:
            fetch.close()
    return out


def _reason(reply: httpx.Response) -> str:
    try:
        body = reply.json()
        return f"{reply.status_code} {body.get('title', '')}: {body.get('detail', '')}"
    except ValueError:
        return f"HTTP {reply.status_code}"


def run(args: argparse.Namespace) -> int:
    import re

    if not re.fullmatch(JOB_ID_PATTERN, args.job.removeprefix("job:")):
        raise ValueError(f"{args.job!r} is not a job id (24 hex digits, optionally 'job:<id>')")
    job_id = args.job.removeprefix("job:")
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    out = Path(args.out or args.artifact.rsplit("/", 1)[-1])
    with httpx.Client(base_url=args.url, timeout=300, headers=headers, follow_redirects=True) as http:
        download(http, job_id, out, artifact=args.artifact, quiet=args.quiet)
    print(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("download", help="download a job's dataset.npz (or another artifact)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", help="the job id (or job:<id>)")
    parser.add_argument("--out", default=None, help="where to write it (default: the artifact's file name)")
    parser.add_argument("--artifact", default="dataset.npz", help="artifact name (default dataset.npz)")
    parser.add_argument("--url", default=os.environ.get("CDP_URL", "http://127.0.0.1:8000"),
                        help="the service (default $CDP_URL or cdp up's)")
    parser.add_argument("--token", default=os.environ.get("CDP_KEY"), help="API key (default $CDP_KEY)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
