"""core.formats.uploads: what an uploaded data set may be, checked without the service (fast)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from core.data.uploaded import load_uploaded
from core.formats.uploads import UploadError, validate_upload
from tests.upload_files import bad_files, folder_zip, good_arrays, npz

LIMIT = 4 << 20


def _validate(data: bytes, tmp_path: Path, **kw):
    return validate_upload(io.BytesIO(data), tmp_path / "out.npz", max_uncompressed=LIMIT, **kw)


def test_npz_is_canonicalised_and_split_with_a_seed(tmp_path) -> None:
    images, labels = good_arrays(n=50, channels=3)
    summary = _validate(npz(image=images, label=labels.astype(np.int32)), tmp_path)
    assert (summary.num_images, summary.image_shape, summary.num_classes) == (50, [16, 16, 3], 10)
    assert summary.class_counts == [5] * 10 and not summary.has_split
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        assert np.array_equal(out["image"], images) and out["label"].dtype == np.int64
    parts = {s: load_uploaded(tmp_path / "out.npz", s, name="x") for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 50 and len(parts["test"]) == 10  # 20 % of each class
    again = load_uploaded(tmp_path / "out.npz", "test", name="x")
    assert np.array_equal(again.labels, parts["test"].labels)  # fixed seed
    assert np.bincount(parts["test"].labels).tolist() == [1] * 10  # stratified


def test_an_uploaded_split_is_kept(tmp_path) -> None:
    images, labels = good_arrays(n=40)
    split = np.array(["train"] * 30 + ["test"] * 10)
    summary = _validate(npz(image=images, label=labels, split=split), tmp_path)
    assert summary.has_split and summary.split_counts == {"train": 30, "test": 10}
    test = load_uploaded(tmp_path / "out.npz", "test", name="x")
    assert sorted(test.labels.tolist()) == sorted(labels[30:].tolist())


def test_three_d_images_gain_a_channel_and_num_classes_widens(tmp_path) -> None:
    data = npz(arr_0=np.zeros((6, 8, 8), np.uint8), arr_1=np.array([0, 1, 2, 0, 1, 2]))
    summary = _validate(data, tmp_path, num_classes=5)
    assert summary.image_shape == [8, 8, 1] and summary.num_classes == 5
    assert summary.class_counts[3:] == [0, 0]
    with pytest.raises(UploadError) as err:
        _validate(npz(image=np.zeros((6, 8, 8), np.uint8), label=np.arange(6)), tmp_path, num_classes=3)
    assert err.value.field == "file.label" and "out of range" in err.value.message


def test_image_folder_zip_with_a_top_folder(tmp_path) -> None:
    summary = _validate(folder_zip(classes=3, per_class=4, mode="RGB", top="pets/"), tmp_path)
    assert summary.class_names == ["c0", "c1", "c2"] and summary.image_shape == [8, 8, 3]
    assert summary.class_counts == [4, 4, 4]
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        assert out["image"].shape == (12, 8, 8, 3) and out["label"].tolist() == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize("case", sorted(bad_files()))
def test_every_bad_file_is_refused_naming_the_field(tmp_path, case: str) -> None:
    data, field = bad_files()[case]
    with pytest.raises(UploadError) as err:
        _validate(data, tmp_path)
    assert f"body.{err.value.field}" == field, err.value.message
    assert len(err.value.message) < 300


def test_a_registration_that_fails_midway_leaves_nothing(tmp_path) -> None:
    """The store fails on the record (the last write): the data object and the marker are removed again."""
    from core.jobs.datasets import register_upload
    from core.jobs.registry import Registry
    from core.storage import MemoryStore, StorageError

    class FailingRecords(MemoryStore):
        def put_json(self, key, value, *, allow_nan=False):
            if key.endswith("record.json"):
                raise StorageError("store went away")
            return super().put_json(key, value, allow_nan=allow_nan)

    store = FailingRecords()
    images, labels = good_arrays(n=20)
    with pytest.raises(StorageError):
        register_upload(Registry(store), "team", "x", io.BytesIO(npz(image=images, label=labels)),
                        max_uncompressed=LIMIT, quota_bytes=None, scratch=tmp_path)
    assert list(store.list("")) == [] and list(tmp_path.iterdir()) == []


def test_compressed_npz_and_a_column_of_labels_are_accepted(tmp_path) -> None:
    images, labels = good_arrays(n=20)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, image=images, label=labels.reshape(-1, 1).astype(np.uint8))
    summary = _validate(buffer.getvalue(), tmp_path)
    assert summary.num_images == 20 and summary.class_counts == [2] * 10
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        assert np.array_equal(out["image"], images) and out["label"].tolist() == labels.tolist()
