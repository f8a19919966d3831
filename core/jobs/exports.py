"""One-file exports: ``jobs/<id>/dataset.npz``, the whole set of a generation job as the field's trainers read
it (``image`` uint8 N x H x W x C, ``label`` int64; ``np.load(..., allow_pickle=False)``).

Written shard by shard: the labels of every shard first (small), then each shard's images are copied into
the one ``image`` member in turn (:class:`core.formats.npzstream.NpzWriter`), so at most one shard's images
are in memory, and the file goes to the store from local disk (multipart on S3). With a selection
(``selected.npz``) the export holds the selected images, the set a training job uses. No torch here.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np

from core.formats.npzstream import NpzWriter
from core.jobs import keys
from core.storage import ObjectNotFound, ObjectStore

EXPORT_NAME = "dataset.npz"


def export_key(job_id: str) -> str:
    return keys.job_prefix(job_id) + EXPORT_NAME


def _shard_labels(store: ObjectStore, job_id: str, shard: int) -> np.ndarray:
    _, labels_key = keys.shard_npy_keys(job_id, shard)
    try:
        return np.load(io.BytesIO(store.get_bytes(labels_key)), allow_pickle=False)
    except ObjectNotFound:  # shards written before the .npy pairs existed
        with np.load(io.BytesIO(store.get_bytes(keys.shard_key(job_id, shard))), allow_pickle=False) as npz:
            return npz["label"]


def _shard_images(store: ObjectStore, job_id: str, shard: int, scratch: Path) -> np.ndarray:
    """The shard's images, memory-mapped from a downloaded ``.npy`` (or read from its npz)."""
    images_key, _ = keys.shard_npy_keys(job_id, shard)
    local = scratch / f"{shard}.images.npy"
    try:
        store.download_file(images_key, local)
    except ObjectNotFound:
        with np.load(io.BytesIO(store.get_bytes(keys.shard_key(job_id, shard))), allow_pickle=False) as npz:
            return npz["image"]
    return np.load(local, mmap_mode="r", allow_pickle=False)


def write_export(store: ObjectStore, job_id: str, n_shards: int, *, work_dir: Path,
                 rows_per_piece: int = 1024) -> int:
    """Write ``jobs/<id>/dataset.npz`` from the job's shards (or its ``selected.npz``); returns its size."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=f"export-{job_id}-") as tmp:
        scratch = Path(tmp)
        target = scratch / EXPORT_NAME
        selected = keys.job_prefix(job_id) + "selected.npz"
        if store.exists(selected):
            with np.load(io.BytesIO(store.get_bytes(selected)), allow_pickle=False) as npz:
                images, labels = npz["image"], npz["label"]
            with NpzWriter(target) as out:
                out.write("image", np.asarray(images, dtype=np.uint8))
                out.write("label", np.asarray(labels, dtype=np.int64))
        else:
            parts = [_shard_labels(store, job_id, k) for k in range(n_shards)]
            labels = np.concatenate(parts).astype(np.int64)
            shape = _shard_images(store, job_id, 0, scratch).shape[1:]
            with NpzWriter(target) as out:
                with out.array("image", np.uint8, (len(labels), *shape)) as add:
                    for shard in range(n_shards):
                        images = _shard_images(store, job_id, shard, scratch)
                        for start in range(0, len(images), rows_per_piece):
                            add(np.asarray(images[start:start + rows_per_piece], dtype=np.uint8))
                        del images
                        (scratch / f"{shard}.images.npy").unlink(missing_ok=True)
                out.write("label", labels)
        info = store.put_file(export_key(job_id), target, content_type="application/octet-stream")
        return info.size
