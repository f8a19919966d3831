"""The streaming npz writer and the one-file export of a generation job (core.formats.npzstream,
core.jobs.exports) on an in-memory store."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from core.formats.npzstream import NpzWriter, read_npy_header
from core.jobs import keys
from core.jobs.artifacts import npy_bytes, npz_bytes
from core.jobs.exports import export_key, write_export
from core.storage import MemoryStore


def test_writer_streams_rows_into_one_member_that_numpy_reads(tmp_path) -> None:
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8) for n in (3, 5, 1)]
    with NpzWriter(tmp_path / "x.npz") as out:
        with out.array("image", np.uint8, (9, 4, 4, 3)) as add:
            for part in parts:
                add(part)
        out.write("label", np.arange(9, dtype=np.int64))
    with np.load(tmp_path / "x.npz", allow_pickle=False) as npz:
        assert np.array_equal(npz["image"], np.concatenate(parts))
        assert npz["label"].dtype == np.int64 and list(npz["label"]) == list(range(9))


def test_writer_refuses_rows_that_do_not_add_up(tmp_path) -> None:
    with pytest.raises(ValueError, match="2 rows written, 3 declared"):
        with NpzWriter(tmp_path / "x.npz") as out, out.array("image", np.uint8, (3, 2)) as add:
            add(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="rows of shape"):
        with NpzWriter(tmp_path / "y.npz") as out, out.array("image", np.uint8, (3, 2)) as add:
            add(np.zeros((3, 5), np.uint8))


def test_header_reader_refuses_object_arrays() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    buffer.seek(0)
    with pytest.raises(ValueError, match="Python objects"):
        read_npy_header(buffer)
    buffer = io.BytesIO(npy_bytes(np.zeros((2, 3), np.int16)))
    dtype, shape, fortran = read_npy_header(buffer)
    assert (dtype, shape, fortran) == (np.dtype(np.int16), (2, 3), False)


def _shards(store: MemoryStore, job_id: str, sizes: list[int], *, with_npy: bool = True) -> tuple:
    rng = np.random.default_rng(1)
    images, labels = [], []
    for k, n in enumerate(sizes):
        im = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
        lab = rng.integers(0, 10, n).astype(np.int64)
        if with_npy:
            a, b = keys.shard_npy_keys(job_id, k)
            store.put_bytes(a, npy_bytes(im))
            store.put_bytes(b, npy_bytes(lab))
        store.put_bytes(keys.shard_key(job_id, k), npz_bytes(image=im, label=lab, confidence=lab * 0.0))
        images.append(im)
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize("with_npy", [True, False])
def test_export_holds_every_shard_in_order(tmp_path, with_npy: bool) -> None:
    store = MemoryStore()
    job_id = "a" * 24
    images, labels = _shards(store, job_id, [8, 8, 3], with_npy=with_npy)
    size = write_export(store, job_id, 3, work_dir=tmp_path, rows_per_piece=5)
    raw = store.get_bytes(export_key(job_id))
    assert len(raw) == size
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        assert sorted(npz.files) == ["image", "label"]
        assert npz["image"].dtype == np.uint8 and npz["image"].shape == (19, 8, 8, 1)
        assert np.array_equal(npz["image"], images) and np.array_equal(npz["label"], labels)
        assert npz["label"].dtype == np.int64
    assert zipfile.ZipFile(io.BytesIO(raw)).testzip() is None
    assert list(tmp_path.iterdir()) == []  # scratch removed


def test_export_of_a_selection_holds_the_selected_set(tmp_path) -> None:
    store = MemoryStore()
    job_id = "b" * 24
    _shards(store, job_id, [4])
    chosen = np.full((2, 8, 8, 1), 7, np.uint8)
    store.put_bytes(keys.job_prefix(job_id) + "selected.npz", npz_bytes(image=chosen, label=np.array([1, 2])))
    write_export(store, job_id, 1, work_dir=tmp_path)
    with np.load(io.BytesIO(store.get_bytes(export_key(job_id))), allow_pickle=False) as npz:
        assert np.array_equal(npz["image"], chosen) and list(npz["label"]) == [1, 2]
