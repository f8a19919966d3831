"""A directory as an object store: the embedded default (``CDP_STORE_BACKEND=local``).

Layout under ``root``: the object ``a/b/c.npz`` is the file ``root/a/b/c.npz``. Next to it, the hidden
sidecar ``root/a/b/.c.npz.meta.json`` records the sha256 and content type computed while the object was
written, together with the file's (inode, size, mtime_ns) (:mod:`core.storage.local_files`). A sidecar
counts only while those three still match the data file, so a stale sidecar (a concurrent overwrite, a file
copied in by hand) is detected and the hash is recomputed once and cached again. Keys never contain a
segment starting with ``.`` (:func:`~core.storage.base.validate_key`), so sidecars and temporary files can
never collide with objects and are never listed.

Writes are atomic: data goes to a temporary file in the target directory, is fsynced, then renamed over the
target (``os.replace``), so readers see the old object or the new one, never a partial one. Create-if-absent
uses ``os.link``, which fails atomically when the target exists.

Limitation of a file system: a key cannot be both an object and a prefix of other objects (``a`` and
``a/b``); writing the second raises :class:`StorageError` naming the conflict.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from core.storage.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    BaseStore,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    as_bytes,
    copy_stream,
    existing_file,
    guess_content_type,
    sha256_file,
    validate_chunk_size,
    validate_key,
    validate_prefix,
)
from core.storage.local_files import (
    etag,
    identity,
    keys_under,
    read_sidecar,
    sidecar_path,
    temporary_file,
    write_all,
    write_sidecar,
)


@dataclass
class _Staged:
    """One object of :meth:`LocalStore.put_many` between its temporary file and its rename."""

    key: str
    path: Path
    content_type: str
    sha256: str
    tmp: str
    fd: int
    closed: bool = False
    placed: bool = False  # renamed into place


def _fill_with(payload: bytes) -> Callable[[BinaryIO], tuple[str, int]]:
    """A ``fill`` for :meth:`LocalStore._write` that writes ``payload``."""

    def fill(fh: BinaryIO) -> tuple[str, int]:
        fh.write(payload)
        return hashlib.sha256(payload).hexdigest(), len(payload)

    return fill


class LocalStore(BaseStore):
    """Objects as files under ``root`` (created on first use). See the module docstring for the layout."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        validate_key(key)
        path = self.root / key
        # validate_key already rules out '..' and absolute keys; this also refuses symlinks inside the root
        # that point outside it.
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root or real == real_root:
            raise StorageError(f"object key {key!r} resolves outside the store root {str(self.root)!r}")
        return path

    def _make_parent(self, path: Path, key: str) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StorageError(
                f"cannot write {key!r}: a parent of it already exists as an object ({exc.filename})"
            ) from exc
        except OSError as exc:
            raise StorageError(f"cannot create the directory for {key!r}: {exc}") from exc

    # -- metadata ----------------------------------------------------------------------------------

    def _stat_file(self, key: str, path: Path) -> os.stat_result:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"cannot stat {key!r}: {exc}") from exc
        if not os.path.isfile(path):
            raise ObjectNotFound(key)
        return st

    def _info(self, key: str, st: os.stat_result, record: dict | None) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=etag(st),
            sha256=record["sha256"] if record else None,
            last_modified=datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC),
            content_type=record.get("content_type") if record else None,
        )

    # -- writes ------------------------------------------------------------------------------------

    def _write(
        self,
        key: str,
        fill: Callable[[BinaryIO], tuple[str, int]],
        content_type: str,
        *,
        exclusive: bool,
    ) -> ObjectInfo | None:
        """Write via a temporary file; ``None`` if ``exclusive`` and the key already existed."""
        path = self._path(key)
        self._make_parent(path, key)
        try:
            with temporary_file(path.parent, f".tmp-{path.name}-") as tmp:
                with os.fdopen(tmp.fd, "wb") as fh:
                    sha256, _ = fill(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp.name, 0o644)
                st = os.stat(tmp.name)  # rename and link keep inode and mtime: this identifies the final file
                if path.is_dir():  # a prefix of other objects, or an empty directory they left behind
                    self._remove_empty_dir(path, key)
                if exclusive:
                    try:
                        os.link(tmp.name, path)  # the temporary name is removed on the way out
                    except FileExistsError:
                        return None
                else:
                    tmp.place(path)
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot write {key!r}: {exc}") from exc
        write_sidecar(path, st, sha256, content_type)
        return self._info(key, st, {"sha256": sha256, "content_type": content_type})

    @staticmethod
    def _remove_empty_dir(path: Path, key: str) -> None:
        try:
            path.rmdir()
        except OSError as exc:
            raise StorageError(
                f"cannot write {key!r}: other objects exist under the prefix '{key}/'"
            ) from exc

    def put_bytes(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        info = self._write(key, _fill_with(as_bytes(data)), content_type, exclusive=False)
        assert info is not None
        return info

    def put_bytes_if_absent(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> bool:
        return self._write(key, _fill_with(as_bytes(data)), content_type, exclusive=True) is not None

    def put_many(self, items: Sequence[tuple[str, bytes, str]]) -> list[ObjectInfo]:
        """As ``put_bytes`` on each item in order, with the fsyncs in one round: every payload goes to its own
        temporary file and all of them are fsynced before the first one is renamed into place, then they are
        renamed in order. So each object is durable before it becomes visible, and visible only after those
        before it, as with separate writes; but the first fsync commits the file system's journal for all of
        them, and the others find little left to flush (a job's record and its two markers: about one disk
        flush instead of three). Bad keys raise before any I/O."""
        payloads = [(key, as_bytes(data), content_type) for key, data, content_type in items]
        for key, _, _ in payloads:
            validate_key(key)
        staged: list[_Staged] = []
        infos: list[ObjectInfo] = []
        current = ""
        try:
            for key, payload, content_type in payloads:
                current = key
                path = self._path(key)
                self._make_parent(path, key)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
                staged.append(_Staged(key, path, content_type, hashlib.sha256(payload).hexdigest(), tmp, fd))
                write_all(fd, payload)
            for item in staged:
                current = item.key
                os.fsync(item.fd)
            for item in staged:
                current = item.key
                item.closed = True
                os.close(item.fd)
                os.chmod(item.tmp, 0o644)
                st = os.stat(item.tmp)
                if item.path.is_dir():
                    self._remove_empty_dir(item.path, item.key)
                os.replace(item.tmp, item.path)
                item.placed = True
                write_sidecar(item.path, st, item.sha256, item.content_type)
                meta = {"sha256": item.sha256, "content_type": item.content_type}
                infos.append(self._info(item.key, st, meta))
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot write {current!r}: {exc}") from exc
        finally:
            for item in staged:
                if not item.closed:
                    with contextlib.suppress(OSError):
                        os.close(item.fd)
                if not item.placed:
                    with contextlib.suppress(OSError):
                        os.unlink(item.tmp)
        return infos

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        source = existing_file(path)

        def fill(fh: BinaryIO) -> tuple[str, int]:
            with open(source, "rb") as src:
                return copy_stream(src, fh)

        info = self._write(key, fill, content_type or guess_content_type(key), exclusive=False)
        assert info is not None
        return info

    # -- reads -------------------------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        st = self._stat_file(key, path)
        record = read_sidecar(path, st)
        if record is None:
            # Unknown or stale hash: compute it once and cache it, if the file did not change meanwhile.
            try:
                sha256, _ = sha256_file(path)
            except FileNotFoundError:
                raise ObjectNotFound(key) from None
            except OSError as exc:
                raise StorageError(f"cannot read {key!r}: {exc}") from exc
            record = {"sha256": sha256, "content_type": guess_content_type(key)}
            with contextlib.suppress(OSError):
                if identity(os.stat(path)) == identity(st):
                    write_sidecar(path, st, sha256, record["content_type"])
        return self._info(key, st, record)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key!r}: {exc}") from exc

    def iter_chunks(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        validate_chunk_size(chunk_size)
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key!r}: {exc}") from exc
        return _file_chunks(fh, chunk_size, key)

    def download_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with temporary_file(dest.parent, f".{dest.name}.part-") as tmp:
                with os.fdopen(tmp.fd, "wb") as out, open(src, "rb") as fh:
                    shutil.copyfileobj(fh, out, DEFAULT_CHUNK_SIZE)
                tmp.place(dest)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            if not src.is_file():
                raise ObjectNotFound(key) from None
            raise StorageError(f"cannot download {key!r} to {str(dest)!r}: {exc}") from exc
        except OSError as exc:
            raise StorageError(f"cannot download {key!r} to {str(dest)!r}: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        for key in keys_under(self.root, prefix):
            path = self.root / key
            try:
                st = os.stat(path)
            except FileNotFoundError:  # deleted while listing
                continue
            yield self._info(key, st, read_sidecar(path, st))

    # -- the rest ----------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            return  # a prefix, not an object: nothing to delete (S3 semantics)
        for target in (path, sidecar_path(path)):
            try:
                os.unlink(target)
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as exc:
                raise StorageError(f"cannot delete {key!r}: {exc}") from exc

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"store root {str(self.root)!r} cannot be created: {exc}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"store root {str(self.root)!r} is not writable")


def _file_chunks(fh: BinaryIO, chunk_size: int, key: str) -> Iterator[bytes]:
    with fh:
        while True:
            try:
                chunk = fh.read(chunk_size)
            except OSError as exc:
                raise StorageError(f"cannot read {key!r}: {exc}") from exc
            if not chunk:
                return
            yield chunk
