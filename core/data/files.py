"""Image sets from array files: npz files, the shard directories a generation job writes and folders of
memory-mapped ``.npy`` pairs (:func:`load_synthetic`, :func:`load_npz`).

Every reader validates what it reads and raises ``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.data.dataset import DatasetInfo, ImageDataset, RowStack, as_labels, as_nhwc, check_images_labels

_SHARD_NAME = re.compile(r"(\d+)\.npz")
_NPY_IMAGES = re.compile(r"(.+)\.images\.npy")


def _read_npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ValueError(f"{path}: npz file missing")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if {"image", "label"} <= keys:
                raw_images, raw_labels = archive["image"], archive["label"]
            elif {"arr_0", "arr_1"} <= keys:
                raw_images, raw_labels = archive["arr_0"], archive["arr_1"]
            else:
                raise ValueError(f"{path}: expected keys image/label or arr_0/arr_1, found {sorted(keys)}")
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: not a valid npz file ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a valid npz file ({exc})") from exc
    images = as_nhwc(raw_images, source=str(path))
    labels = as_labels(raw_labels, source=str(path))
    check_images_labels(images, labels, num_classes=None, source=str(path))
    return images, labels


def load_npz(path: Path | str, *, num_classes: int | None = None, name: str | None = None) -> ImageDataset:
    """An npz file with uint8 images (N x H x W x C, or N x H x W for one channel) and integer labels under
    the keys ``image``/``label`` or ``arr_0``/``arr_1``; read with ``allow_pickle=False``.

    ``num_classes`` defaults to the largest label + 1; when given, labels beyond it are an error.
    """
    path = Path(path)
    images, labels = _read_npz_arrays(path)
    return _make_dataset(images, labels, num_classes=num_classes, name=name or path.stem, source=str(path))


def shard_files(directory: Path) -> list[Path]:
    """The ``<k>.npz`` files of a shard directory in numeric order (``directory/shards/`` if that exists)."""
    if (directory / "shards").is_dir():
        directory = directory / "shards"
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _SHARD_NAME.fullmatch(p.name))]
    if not found:
        raise ValueError(f"{directory}: no shard files named <k>.npz")
    return [p for _, p in sorted(found)]


def npy_pairs(directory: Path) -> list[tuple[Path, Path]]:
    """The ``<name>.images.npy`` / ``<name>.labels.npy`` pairs of a folder (``directory/shards/`` if that
    exists), numeric names in numeric order, then the others by name; [] if there are none. An images file
    without its labels file is an error."""
    if (directory / "shards").is_dir():
        directory = directory / "shards"
    found = []
    for path in directory.iterdir():
        if m := _NPY_IMAGES.fullmatch(path.name):
            labels = directory / f"{m.group(1)}.labels.npy"
            if not labels.is_file():
                raise ValueError(f"{path}: its labels file {labels.name} is missing")
            stem = m.group(1)
            found.append(((0, int(stem), "") if stem.isdigit() else (1, 0, stem), path, labels))
    return [(images, labels) for _, images, labels in sorted(found)]


def _map_npy_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images memory-mapped read-only (no pixel is read here), the labels read into memory."""
    try:
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{images_path}: not a readable .npy pair ({exc})") from exc
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{images_path}: images must be uint8 N x H x W x C, got {images.dtype} "
                         f"{images.shape}")
    labels = as_labels(labels, source=str(labels_path))
    check_images_labels(images, labels, num_classes=None, source=str(images_path))
    return images, labels


def load_synthetic(
    paths: Sequence[Path | str], *, num_classes: int | None = None, name: str = "synthetic"
) -> ImageDataset:
    """One set from npz files, shard directories (``<k>.npz``, as generation jobs write them) and folders of
    ``.npy`` pairs (``<k>.images.npy`` uint8 N x H x W x C + ``<k>.labels.npy`` int64).

    A folder that holds .npy pairs is memory-mapped: its images stay on disk and a training step reads only
    the rows of its batch (:class:`core.data.dataset.RowStack` over the pairs), so sets larger than memory
    train. npz files are read into memory. All parts must share image size and channels; ``num_classes``
    as in :func:`load_npz`.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise ValueError("load_synthetic: no paths given")
    files: list[Path] = []
    mapped: list[tuple[Path, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            pairs = npy_pairs(path)
            if pairs:
                mapped += pairs
            else:
                files += shard_files(path)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or directory")
    image_parts: list[np.ndarray] = []
    label_parts: list[np.ndarray] = []
    for images_path, labels_path in mapped:
        images, labels = _map_npy_pair(images_path, labels_path)
        if image_parts and images.shape[1:] != image_parts[0].shape[1:]:
            raise ValueError(f"{images_path}: images are {images.shape[1:]} (H, W, C), others "
                             f"{image_parts[0].shape[1:]}")
        image_parts.append(images)
        label_parts.append(labels)
    if mapped and not files:
        stacked = image_parts[0] if len(image_parts) == 1 else RowStack(image_parts)
        labels = np.concatenate(label_parts)
        return _make_dataset(stacked, labels, num_classes=num_classes, name=name,
                             source=", ".join(str(p) for p in paths), copy=False)
    for file in files:
        images, labels = _read_npz_arrays(file)
        if image_parts and images.shape[1:] != image_parts[0].shape[1:]:
            raise ValueError(
                f"{file}: images are {images.shape[1:]} (H, W, C), {files[0]} has {image_parts[0].shape[1:]}"
            )
        image_parts.append(images)
        label_parts.append(labels)
    return _make_dataset(
        np.concatenate(image_parts),
        np.concatenate(label_parts),
        num_classes=num_classes,
        name=name,
        source=", ".join(str(p) for p in paths),
    )


def _make_dataset(
    images: np.ndarray | RowStack, labels: np.ndarray, *, num_classes: int | None, name: str, source: str,
    copy: bool = True,
) -> ImageDataset:
    if num_classes is not None and int(labels.max()) >= num_classes:
        raise ValueError(f"{source}: label {int(labels.max())} out of range for {num_classes} classes")
    classes = num_classes if num_classes is not None else int(labels.max()) + 1
    info = DatasetInfo(name, num_classes=classes, image_size=images.shape[1], channels=images.shape[3])
    return ImageDataset(np.ascontiguousarray(images) if copy else images, labels, info)  # type: ignore[arg-type]
