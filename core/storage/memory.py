"""An in-process object store: the in-memory twin of the real adapters, for tests of code that uses a store.

It passes the same contract suite as :class:`~core.storage.local.LocalStore` and
:class:`~core.storage.minio_store.MinioStore`. Thread-safe; not shared between processes.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from core.storage.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    BaseStore,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    as_bytes,
    existing_file,
    guess_content_type,
    validate_chunk_size,
    validate_key,
    validate_prefix,
)


class MemoryStore(BaseStore):
    """Objects in a dict. ``fail_with`` makes every operation raise that error (to test error paths)."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._lock = threading.Lock()
        self.fail_with: StorageError | None = None

    def _check(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def _store(self, key: str, payload: bytes, content_type: str, *, exclusive: bool) -> ObjectInfo | None:
        validate_key(key)
        self._check()
        sha = hashlib.sha256(payload).hexdigest()
        with self._lock:
            if exclusive and key in self._objects:
                return None
            info = ObjectInfo(
                key=key,
                size=len(payload),
                etag=hashlib.md5(payload, usedforsecurity=False).hexdigest(),
                sha256=sha,
                last_modified=datetime.now(tz=UTC),
                content_type=content_type,
            )
            self._objects[key] = (payload, info)
        return info

    def _get(self, key: str) -> tuple[bytes, ObjectInfo]:
        validate_key(key)
        self._check()
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise ObjectNotFound(key) from None

    def put_bytes(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        info = self._store(key, as_bytes(data), content_type, exclusive=False)
        assert info is not None
        return info

    def put_bytes_if_absent(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> bool:
        return self._store(key, as_bytes(data), content_type, exclusive=True) is not None

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        source = existing_file(path)
        return self.put_bytes(key, source.read_bytes(), content_type=content_type or guess_content_type(key))

    def get_bytes(self, key: str) -> bytes:
        return self._get(key)[0]

    def iter_chunks(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        validate_chunk_size(chunk_size)
        payload = self._get(key)[0]
        return (payload[i : i + chunk_size] for i in range(0, len(payload), chunk_size))

    def download_file(self, key: str, path: Path) -> None:
        payload = self._get(key)[0]
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        tmp.write_bytes(payload)
        tmp.replace(dest)

    def stat(self, key: str) -> ObjectInfo:
        return self._get(key)[1]

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        self._check()
        with self._lock:
            infos = [info for key, (_, info) in self._objects.items() if key.startswith(prefix)]
        yield from sorted(infos, key=lambda i: i.key)

    def delete(self, key: str) -> None:
        validate_key(key)
        self._check()
        with self._lock:
            self._objects.pop(key, None)

    def ping(self) -> None:
        self._check()
