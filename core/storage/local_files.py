"""File-system pieces of :class:`~core.storage.local.LocalStore`: temporary files, metadata sidecars and the
walk that lists keys.

A temporary file is created next to its target and renamed over it (``os.replace``) once complete, so
readers see the old file or the new one; :func:`temporary_file` removes it again when it was not placed.

The sidecar of ``dir/name`` is the hidden ``dir/.name.meta.json``: the sha256 and content type recorded at
write time, with the data file's (inode, size, mtime_ns). A record counts only while those three still match
the data file (:func:`read_sidecar`), so a stale one is never believed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".meta.json"


@dataclass
class TemporaryFile:
    """An open temporary file (``fd``) at ``name``; ``placed`` once renamed over its target."""

    fd: int
    name: str
    placed: bool = False

    def place(self, target: Path) -> None:
        """Rename the (closed, complete) file over ``target``."""
        os.replace(self.name, target)
        self.placed = True


@contextlib.contextmanager
def temporary_file(directory: Path, prefix: str) -> Iterator[TemporaryFile]:
    """A new temporary file in ``directory``, deleted on the way out unless it was placed."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix)
    tmp = TemporaryFile(fd, name)
    try:
        yield tmp
    finally:
        if not tmp.placed:
            with contextlib.suppress(OSError):
                os.unlink(name)


def sidecar_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{SIDECAR_SUFFIX}")


def identity(st: os.stat_result) -> dict[str, int]:
    return {"inode": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def etag(st: os.stat_result) -> str:
    # Opaque and cheap: changes whenever the file is replaced (new inode) or rewritten in place.
    return hashlib.sha256(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:32]


def write_sidecar(path: Path, st: os.stat_result, sha256: str, content_type: str | None) -> None:
    """Record ``sha256`` and ``content_type`` for the data file ``path`` whose stat is ``st``."""
    record = {**identity(st), "sha256": sha256, "content_type": content_type}
    try:
        with temporary_file(path.parent, f".tmp-meta-{path.name}-") as tmp:
            with os.fdopen(tmp.fd, "w") as fh:
                json.dump(record, fh)
            tmp.place(sidecar_path(path))
    except OSError as exc:  # the sidecar is a cache: losing it costs a re-hash, not data
        logger.warning("could not write the metadata sidecar of %s: %s", path, exc)


def read_sidecar(path: Path, st: os.stat_result) -> dict | None:
    """The sidecar record if it describes exactly this file, else ``None``."""
    try:
        record = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in identity(st).items()):
        return None
    sha = record.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        return None
    return record


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def keys_under(root: Path, prefix: str) -> list[str]:
    """The sorted keys of the files under ``root`` whose key starts with ``prefix`` (a valid listing prefix).

    Hidden names (sidecars, temporary files) are skipped; only the directory the prefix ends in is walked.
    """
    if prefix == "" or prefix.endswith("/"):
        base, name_start = root / prefix, ""
    else:
        head, _, tail = prefix.rpartition("/")
        base, name_start = root / head, tail
    keys: list[str] = []
    if base.is_dir():
        for dirpath, dirnames, filenames in os.walk(base):
            top = Path(dirpath) == base
            dirnames[:] = [
                d for d in dirnames if not d.startswith(".") and (not top or d.startswith(name_start))
            ]
            for name in filenames:
                if name.startswith(".") or (top and not name.startswith(name_start)):
                    continue
                keys.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(keys)
