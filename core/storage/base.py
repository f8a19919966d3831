"""The object-store interface: keys, object metadata, errors and the helpers every adapter shares.

Everything a job produces (job records, shards, metrics, checkpoints, previews) is stored under a *key*,
a ``/``-separated path such as ``jobs/<id>/shards/0.npz``. Keys reach the store from request data, so they
are validated the same way by every adapter (:func:`validate_key`) before any I/O happens.

Adapters: :class:`core.storage.local.LocalStore` (a directory), :class:`core.storage.minio_store.MinioStore`
(MinIO / any S3 server via the ``minio`` SDK) and :class:`core.storage.memory.MemoryStore` (in-process, for
tests). They pass one contract test suite (``tests/test_storage_contract.py``).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

DEFAULT_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"
DEFAULT_CHUNK_SIZE = 1024 * 1024
# S3 caps keys at 1024 bytes; one path component must also fit a file name (255 bytes on common file
# systems) with room for the local store's hidden sidecar/temporary names.
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 200
# A key segment: letters, digits and ``_ - . = + @ , ~``, not starting with a dot (so ``.``, ``..`` and
# hidden names are impossible; the local store keeps its sidecar files under dot-names).
_SEGMENT = re.compile(r"[A-Za-z0-9_\-=+@,~][A-Za-z0-9_\-.=+@,~]*")
# Presigned URLs: S3 accepts 1 s .. 7 days.
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600


class StorageError(Exception):
    """Any failure of the object store (unreachable server, permission, corrupt object, ...)."""


class ObjectNotFound(StorageError):  # noqa: N818 - the name the interface agreed on
    """The key does not exist in the store."""

    def __init__(self, key: str, message: str | None = None) -> None:
        super().__init__(message or f"object not found: {key!r}")
        self.key = key


class InvalidKey(StorageError, ValueError):  # noqa: N818 - the name the interface agreed on
    """A key (or list prefix) that the store refuses; raised before any I/O."""

    def __init__(self, key: object, reason: str) -> None:
        super().__init__(f"invalid object key {key!r}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of one stored object.

    ``etag`` is opaque (it changes when the content changes). ``sha256`` is the hex digest of the whole
    object as recorded at write time; it is ``None`` when the backend does not know it cheaply (listings
    from S3, objects written by other tools) -- :meth:`ObjectStore.stat` gives it whenever it was recorded.
    ``content_type`` is ``None`` in listings from S3 servers, which do not report it there.
    """

    key: str
    size: int
    etag: str
    sha256: str | None
    last_modified: datetime
    content_type: str | None = None


def validate_key(key: object) -> str:
    """Return ``key`` unchanged if it is a valid object key, else raise :class:`InvalidKey`.

    Rules (identical for every adapter): a non-empty ``str`` of at most 1024 UTF-8 bytes; segments split on
    ``/`` are non-empty (no leading, trailing or doubled slash), at most 200 bytes, made of ASCII letters,
    digits and ``_ - . = + @ , ~``, and do not start with ``.`` (which rules out ``.`` and ``..``).
    Backslashes, spaces, control characters and non-ASCII characters are refused.
    """
    if not isinstance(key, str):
        raise InvalidKey(key, f"must be a str, got {type(key).__name__}")
    if not key:
        raise InvalidKey(key, "must not be empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey(key, f"longer than {MAX_KEY_BYTES} bytes")
    if "\\" in key:
        raise InvalidKey(key, "backslashes are not allowed")
    if key.startswith("/"):
        raise InvalidKey(key, "must be relative (no leading '/')")
    for segment in key.split("/"):
        if not segment:
            raise InvalidKey(key, "empty path segment (leading, trailing or doubled '/')")
        if segment in (".", ".."):
            raise InvalidKey(key, f"path segment {segment!r} is not allowed")
        if len(segment) > MAX_SEGMENT_BYTES:
            raise InvalidKey(key, f"path segment longer than {MAX_SEGMENT_BYTES} bytes")
        if not _SEGMENT.fullmatch(segment):
            raise InvalidKey(
                key,
                f"path segment {segment!r} must use only letters, digits and '_-.=+@,~' "
                "and must not start with '.'",
            )
    return key


def validate_prefix(prefix: object) -> str:
    """Validate a listing prefix: ``""`` (everything), a key, or a key followed by ``/``."""
    if not isinstance(prefix, str):
        raise InvalidKey(prefix, f"prefix must be a str, got {type(prefix).__name__}")
    if prefix == "":
        return prefix
    body = prefix[:-1] if prefix.endswith("/") else prefix
    try:
        validate_key(body)
    except InvalidKey as exc:
        raise InvalidKey(prefix, f"invalid prefix: {exc.reason}") from None
    return prefix


def validate_expiry(expires: int) -> int:
    """Presigned-URL lifetime in seconds: an int in 1 .. 604800 (7 days, the S3 maximum)."""
    if isinstance(expires, bool) or not isinstance(expires, int) or not 1 <= expires <= MAX_PRESIGN_EXPIRY_S:
        raise ValueError(
            f"expires must be an int number of seconds in 1..{MAX_PRESIGN_EXPIRY_S}, got {expires!r}"
        )
    return expires


def validate_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def guess_content_type(key: str) -> str:
    """Content type from the key's extension, ``application/octet-stream`` when unknown."""
    guessed, _ = mimetypes.guess_type(key, strict=False)
    return guessed or DEFAULT_CONTENT_TYPE


def sha256_file(path: Path, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[str, int]:
    """Hex sha256 and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def existing_file(path: Path) -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is a regular file, else :class:`FileNotFoundError` (the
    source check of every ``put_file``)."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"put_file: no such file {str(source)!r}")
    return source


def as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"data must be bytes, bytearray or memoryview, got {type(data).__name__}")


@runtime_checkable
class ObjectStore(Protocol):
    """What the service needs from object storage; ``tests/test_storage_contract.py`` holds every adapter to
    it. All keys go through :func:`validate_key`.

    Errors: :class:`InvalidKey` for bad keys (before any I/O), :class:`ObjectNotFound` for missing keys,
    :class:`StorageError` for everything else; backend exceptions never escape.
    """

    def put_bytes(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Store ``data`` under ``key`` (replacing any object there) and return its metadata."""
        ...

    def put_bytes_if_absent(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> bool:
        """Create ``key`` only if it does not exist; ``True`` if this call created it."""
        ...

    def put_many(self, items: Sequence[tuple[str, bytes, str]]) -> list[ObjectInfo]:
        """Store several objects ``(key, data, content_type)`` in order, as ``put_bytes`` on each would. An
        object becomes visible only after those before it; on an error, a leading part of the items may be
        stored and none after it; bad keys raise before any is written. A backend may make them durable
        together (the local store fsyncs them in one round before renaming any into place)."""
        ...

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        """Upload a local file (streamed; multipart on S3); content type guessed from ``key`` if None."""
        ...

    def get_bytes(self, key: str) -> bytes: ...

    def iter_chunks(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """Stream an object. Raises :class:`ObjectNotFound` *at call time*, before the first chunk."""
        ...

    def download_file(self, key: str, path: Path) -> None:
        """Write the object to ``path`` (parents created; the file appears atomically)."""
        ...

    def exists(self, key: str) -> bool: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (plain string prefix), sorted by key."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing key is not an error (S3 semantics)."""
        ...

    def presigned_url(self, key: str, *, expires: int) -> str | None:
        """A time-limited GET URL, or ``None`` when the backend cannot make one (local store)."""
        ...

    def ping(self) -> None:
        """Return if the store is usable, else raise :class:`StorageError` saying why."""
        ...

    def put_json(self, key: str, value: Any, *, allow_nan: bool = False) -> ObjectInfo: ...

    def get_json(self, key: str) -> Any: ...


class BaseStore(ABC):
    """Shared helpers for adapters: ``put_many`` as ordered ``put_bytes``, ``exists`` via ``stat``, JSON
    through bytes, and ``presigned_url`` for backends that have no URLs."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo: ...

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def iter_chunks(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]: ...

    def put_many(self, items: Sequence[tuple[str, bytes, str]]) -> list[ObjectInfo]:
        for key, _, _ in items:
            validate_key(key)  # every key before the first write
        return [self.put_bytes(key, data, content_type=content_type) for key, data, content_type in items]

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def presigned_url(self, key: str, *, expires: int) -> str | None:
        """``None`` after checking the arguments: this backend has no URLs (the API streams the object
        instead). Adapters that can sign URLs override it."""
        validate_key(key)
        validate_expiry(expires)
        return None

    def put_json(self, key: str, value: Any, *, allow_nan: bool = False) -> ObjectInfo:
        """Store ``value`` as UTF-8 JSON; NaN/Infinity (not JSON) are refused unless ``allow_nan``."""
        try:
            text = json.dumps(value, indent=2, ensure_ascii=False, allow_nan=allow_nan)
        except ValueError as exc:
            raise ValueError(f"cannot store {key!r} as JSON: {exc}") from exc
        return self.put_bytes(key, text.encode("utf-8"), content_type=JSON_CONTENT_TYPE)

    def get_json(self, key: str) -> Any:
        raw = self.get_bytes(key)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(f"object {key!r} is not valid JSON: {exc}") from exc


def copy_stream(src: BinaryIO, dst: BinaryIO, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` in chunks; return the hex sha256 and the byte count of what was copied."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(chunk_size):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size
