"""Data sets by reference: the built-in names and uploads (``ds:<id>``), registered (API side) and read by the
units (worker side). No torch here.

A job names its data set as a built-in (``digits``, ``mnist5k``, ...) or as ``ds:<id>``. A unit calls
:func:`dataset_root` once, which for an upload downloads its canonical npz to ``<work_dir>/datasets/``
(once per worker; entries are immutable) and returns that folder in place of the data root, then reads
splits with :func:`load_split` exactly as it would call ``core.data.load_dataset``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from core.jobs.registry import DATASET_REF, Registry, data_key, entry_id, now, ref_id, sha256_stream
from core.options import DatasetName
from core.storage import ObjectStore

# What GET /datasets lists for the built-in names (read-only; ``available``: the server has its files).
BUILTIN_DATASETS: dict[DatasetName, dict[str, Any]] = {
    "digits": {"num_images": 1797, "image_shape": [16, 16, 1], "num_classes": 10},
    "mnist5k": {"num_images": 5000, "image_shape": [32, 32, 1], "num_classes": 10},
    "mnist5k16": {"num_images": 5000, "image_shape": [16, 16, 1], "num_classes": 10},
    "cifar10": {"num_images": 60000, "image_shape": [32, 32, 3], "num_classes": 10},
    "gtsrb": {"num_images": None, "image_shape": [32, 32, 3], "num_classes": 43},
}


def builtin_entry(name: str, *, available: bool) -> dict[str, Any]:
    return {"id": name, "name": name, "owner": None, "builtin": True, "available": available,
            "class_counts": None, "sha256": None, "created_at": None, "split": "fixed",
            **BUILTIN_DATASETS[name]}


def register_upload(registry: Registry, owner: str, name: str, upload: BinaryIO, *, max_uncompressed: int,
                    quota_bytes: int | None, num_classes: int | None = None, source: str = "upload",
                    scratch: Path | None = None) -> tuple[dict[str, Any], bool]:
    """Validate ``upload`` (a seekable file), store it and record it; ``(record, created)``. ``created`` is
    False when this team already has the same file (the existing entry is returned, nothing is stored).
    Raises :class:`core.formats.uploads.UploadError` for a bad file and
    :class:`core.jobs.errors.StorageQuotaExceeded` beyond the team's storage quota."""
    from core.formats.uploads import validate_upload

    sha256, size = sha256_stream(upload)
    new_id = entry_id(owner, "datasets", sha256)
    try:
        return registry.get("datasets", new_id, scope=owner), False
    except LookupError:
        pass
    registry.check_quota(owner, size, quota_bytes)  # fail fast before any work
    with tempfile.TemporaryDirectory(prefix="cdp-dataset-", dir=scratch) as tmp:
        canonical = Path(tmp) / "data.npz"
        summary = validate_upload(upload, canonical, max_uncompressed=max_uncompressed,
                                  num_classes=num_classes)
        stored = canonical.stat().st_size
        registry.check_quota(owner, stored, quota_bytes)
        record = {"id": new_id, "name": name, "owner": owner, "builtin": False, "kind": "dataset",
                  "num_images": summary.num_images, "image_shape": summary.image_shape,
                  "num_classes": summary.num_classes, "class_counts": summary.class_counts,
                  "class_names": summary.class_names,
                  "split": "uploaded" if summary.has_split else "seeded",
                  "split_counts": summary.split_counts or None, "sha256": sha256, "size": size,
                  "stored_bytes": stored, "source": source, "created_at": now()}
        registry.add("datasets", record, {data_key(new_id): canonical})
    return record, True


# ------------------------------------------------------------------------------------------ worker side
def dataset_root(store: ObjectStore, name: str, *, data_root: Path, work_dir: Path) -> Path:
    """The data root to read ``name`` from: the server's for a built-in, else the folder holding the
    upload's npz (downloaded once)."""
    upload = ref_id(name, DATASET_REF)
    if upload is None:
        return data_root
    folder = work_dir / "datasets"
    target = folder / f"{upload}.npz"
    if not target.exists():
        store.download_file(data_key(upload), target)
    record = store.get_json(f"registry/datasets/{upload}/record.json")
    (folder / f"{upload}.json").write_text(json.dumps(
        {"class_names": record.get("class_names"), "num_classes": record.get("num_classes"),
         "name": record.get("name")}))
    return folder


def load_split(name: str, split: str, *, root: Path | str | None) -> Any:
    """``core.data.load_dataset`` for a built-in; for ``ds:<id>`` the split of the upload under ``root``
    (from :func:`dataset_root`): the upload's own train/test marks or the fixed seeded stratified split."""
    upload = ref_id(name, DATASET_REF)
    if upload is None:
        from core.data import load_dataset

        return load_dataset(name, split, root=root)  # type: ignore[arg-type]
    from core.data.uploaded import load_uploaded

    assert root is not None
    meta_path = Path(root) / f"{upload}.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return load_uploaded(Path(root) / f"{upload}.npz", split, name=name,
                         class_names=meta.get("class_names"), num_classes=meta.get("num_classes"))
