"""The per-team registry of uploaded data sets and models, kept in the object store (no Redis: records are
few and read by id). No torch here; model validation runs in a subprocess (:mod:`core.jobs.model_check`).

Layout: ``registry/<kind>/<id>/record.json`` (the record, written last: its presence means registered),
``registry/datasets/<id>/data.npz`` (the canonical npz, :func:`core.formats.uploads.validate_upload`),
``registry/models/<id>/model/...`` (the model directory), and an empty marker
``registry/owners/<owner digest>/<kind>/<id>`` per entry, so a team's list reads only its own records.

Content is addressed per team: ``id`` = the first 24 hex digits of sha256(owner, kind, sha256 of the upload),
so the same file uploaded twice by one team is the same entry, stored once, and two teams never share (or
learn of) each other's entries. Another team's entry is "not found", as for jobs; admins see every team's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from core.jobs.errors import EntryInUse, EntryNotFound, StorageQuotaExceeded
from core.storage import ObjectNotFound, ObjectStore

Kind = Literal["datasets", "models"]
PREFIX = "registry"
DATASET_REF = "ds:"
MODEL_REF = "model:"


def owner_digest(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


def entry_prefix(kind: Kind, entry_id: str) -> str:
    return f"{PREFIX}/{kind}/{entry_id}/"


def record_key(kind: Kind, entry_id: str) -> str:
    return entry_prefix(kind, entry_id) + "record.json"


def data_key(entry_id: str) -> str:
    return entry_prefix("datasets", entry_id) + "data.npz"


def model_prefix(entry_id: str) -> str:
    return entry_prefix("models", entry_id) + "model/"


def marker_key(owner: str, kind: Kind, entry_id: str) -> str:
    return f"{PREFIX}/owners/{owner_digest(owner)}/{kind}/{entry_id}"


def entry_id(owner: str, kind: Kind, sha256: str) -> str:
    return hashlib.sha256(f"{owner}\0{kind}\0{sha256}".encode()).hexdigest()[:24]


def ref_id(ref: str, prefix: str) -> str | None:
    return ref[len(prefix):] if ref.startswith(prefix) else None


def sha256_stream(stream: BinaryIO, chunk: int = 1 << 20) -> tuple[str, int]:
    stream.seek(0)
    digest, size = hashlib.sha256(), 0
    while data := stream.read(chunk):
        digest.update(data)
        size += len(data)
    stream.seek(0)
    return digest.hexdigest(), size


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Registry:
    store: ObjectStore

    def get(self, kind: Kind, entry_id: str, *, scope: str | None) -> dict[str, Any]:
        """The record, if it exists and ``scope`` (an owner, or None for an admin) may see it."""
        try:
            record = self.store.get_json(record_key(kind, entry_id))
        except (ObjectNotFound, ValueError):
            raise EntryNotFound(f"no {kind[:-1]} {entry_id}") from None
        if scope is not None and record.get("owner") != scope:
            raise EntryNotFound(f"no {kind[:-1]} {entry_id}")
        return record

    def list(self, kind: Kind, *, scope: str | None) -> list[dict[str, Any]]:
        """Every visible record of ``kind``, newest first."""
        if scope is None:
            ids = {info.key.split("/")[2] for info in self.store.list(f"{PREFIX}/{kind}/")
                   if info.key.endswith("/record.json")}
        else:
            prefix = f"{PREFIX}/owners/{owner_digest(scope)}/{kind}/"
            ids = {info.key.rsplit("/", 1)[-1] for info in self.store.list(prefix)}
        records = []
        for entry in ids:
            try:
                records.append(self.get(kind, entry, scope=scope))
            except EntryNotFound:  # a marker whose registration did not finish
                continue
        return sorted(records, key=lambda r: (r.get("created_at", ""), r["id"]), reverse=True)

    def used_bytes(self, owner: str) -> int:
        return sum(int(r.get("stored_bytes", 0)) for kind in ("datasets", "models")
                   for r in self.list(kind, scope=owner))  # type: ignore[arg-type]

    def check_quota(self, owner: str, needed: int, quota: int | None) -> None:
        if quota is None:
            return
        used = self.used_bytes(owner)
        if used + needed > quota:
            raise StorageQuotaExceeded(owner, used, needed, quota)

    def add(self, kind: Kind, record: dict[str, Any], files: dict[str, Path]) -> None:
        """Store ``files`` (key -> local path), the owner's marker, then the record (last). On any error
        what was written is removed again: a failed registration leaves nothing behind."""
        written: list[str] = []
        try:
            for key, path in files.items():
                self.store.put_file(key, path)
                written.append(key)
            marker = marker_key(record["owner"], kind, record["id"])
            self.store.put_bytes(marker, b"")
            written.append(marker)
            self.store.put_json(record_key(kind, record["id"]), record)
        except BaseException:
            for key in reversed(written):
                try:
                    self.store.delete(key)
                except Exception:  # noqa: BLE001 - best effort; the record was never written
                    pass
            raise

    def delete(self, kind: Kind, entry_id: str, *, scope: str | None,
               users: Callable[[str], list[str]]) -> dict[str, Any]:
        """Remove an entry unless ``users(ref)`` names unfinished jobs that use it (:class:`EntryInUse`)."""
        record = self.get(kind, entry_id, scope=scope)
        ref = (DATASET_REF if kind == "datasets" else MODEL_REF) + entry_id
        using = users(ref)
        if using:
            raise EntryInUse(ref, using)
        self.store.delete(record_key(kind, entry_id))  # gone for everyone from here on
        self.store.delete(marker_key(record["owner"], kind, entry_id))
        for info in list(self.store.list(entry_prefix(kind, entry_id))):
            self.store.delete(info.key)
        return record

    def iter_files(self, kind: Kind, entry_id: str) -> Iterator[str]:
        for info in self.store.list(entry_prefix(kind, entry_id)):
            yield info.key


def jobs_using(store: ObjectStore, ref: str, *, active_prefix: str = "active/") -> list[str]:
    """Ids of unfinished jobs (``active/<id>`` markers) whose input mentions ``ref``."""
    from core.jobs import keys

    found = []
    needle = json.dumps(ref)
    for info in store.list(active_prefix):
        job_id = info.key.rsplit("/", 1)[-1]
        try:
            record = store.get_json(keys.record_key(job_id))
        except (ObjectNotFound, ValueError):
            continue
        if record.get("status") in ("succeeded", "failed", "canceled"):
            continue
        if needle in json.dumps(record.get("input", {})):
            found.append(job_id)
    return found
