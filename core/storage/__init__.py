"""Object storage for everything jobs produce: one small interface, a local-directory and a MinIO adapter.

>>> store = store_from_settings(get_settings())      # LocalStore or MinioStore
>>> store.put_json("jobs/abc/metrics.json", {"count": 10})
>>> store.get_json("jobs/abc/metrics.json")["count"]
10

See :mod:`core.storage.base` for the interface and key rules, and ``docs/operations.md`` for running MinIO.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.storage.base import (
    BaseStore,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    validate_key,
    validate_prefix,
)
from core.storage.local import LocalStore
from core.storage.memory import MemoryStore

if TYPE_CHECKING:
    from core.settings import Settings
    from core.storage.minio_store import MinioStore

__all__ = [
    "BaseStore",
    "InvalidKey",
    "LocalStore",
    "MemoryStore",
    "MinioStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "StorageError",
    "store_from_settings",
    "validate_key",
    "validate_prefix",
]


def store_from_settings(settings: Settings) -> ObjectStore:
    """The store the settings select (``store_backend``). Makes no network request."""
    if settings.store_backend == "local":
        return LocalStore(settings.store_root)
    if settings.store_backend == "minio":
        from core.storage.minio_store import MinioStore

        return MinioStore(
            settings.minio_endpoint,
            settings.minio_access_key,
            settings.minio_secret_key.get_secret_value(),
            settings.minio_bucket,
            secure=settings.minio_secure,
            region=settings.minio_region,
            public_endpoint=settings.minio_public_endpoint or None,
            part_size=settings.minio_part_size_mib * 1024 * 1024,
        )
    raise ValueError(f"unknown store_backend {settings.store_backend!r}; expected 'local' or 'minio'")


def __getattr__(name: str) -> object:
    # MinioStore is imported lazily so that the local store does not pull in the minio SDK and urllib3.
    if name == "MinioStore":
        from core.storage.minio_store import MinioStore

        return MinioStore
    raise AttributeError(f"module 'core.storage' has no attribute {name!r}")
