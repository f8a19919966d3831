"""A job's files in the object store: directory download and sync, npy/npz bytes, JSON-safe metrics and the
manifest that marks a job's outputs complete. No torch here."""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from core.jobs import keys
from core.storage import ObjectStore


def download_prefix(store: ObjectStore, prefix: str, target: Path) -> int:
    """Copy every object under ``prefix`` to ``target/<rest of key>``; returns the number of files."""
    count = 0
    for info in store.list(prefix):
        store.download_file(info.key, target / info.key[len(prefix):])
        count += 1
    return count


class DirectorySync:
    """Uploads new or changed files of a local directory under a store prefix (checkpoints each epoch)."""

    def __init__(self, store: ObjectStore, local: Path, prefix: str) -> None:
        self.store, self.local, self.prefix = store, local, prefix
        self._seen: dict[str, tuple[int, int]] = {}

    def __call__(self) -> int:
        uploaded = 0
        for path in sorted(p for p in self.local.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = path.relative_to(self.local).as_posix()
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(rel) == signature:
                continue
            self.store.put_file(self.prefix + rel, path)
            self._seen[rel] = signature
            uploaded += 1
        return uploaded


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays and non-finite floats -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return jsonable(value.item())
    return value


def write_manifest(store: ObjectStore, job_id: str) -> dict[str, Any]:
    """``manifest.json``: every artifact of the job with size and sha256. Written last: its presence means
    the job's outputs are complete."""
    prefix = keys.job_prefix(job_id)
    skip = {keys.record_key(job_id), keys.manifest_key(job_id)}
    artifacts = []
    for info in store.list(prefix):
        if info.key in skip:
            continue
        digest = info.sha256 or store.stat(info.key).sha256
        if digest is None:
            digest = hashlib.sha256(store.get_bytes(info.key)).hexdigest()
        artifacts.append({"name": info.key[len(prefix):], "size": info.size, "sha256": digest})
    manifest = {"job_id": job_id, "artifacts": artifacts}
    store.put_json(keys.manifest_key(job_id), manifest)
    return manifest
