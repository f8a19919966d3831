"""Dataset readers: scikit-learn digits, CIFAR-10 (official python batches), GTSRB (class folders), npz files
and the shards a generation job writes.

Every reader validates what it reads and raises ``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import tarfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.data.dataset import DatasetInfo, ImageDataset, as_labels, as_nhwc, check_images_labels, seeded_split

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
DATASET_NAMES: tuple[str, ...] = ("digits", "cifar10", "gtsrb")

# digits: test 20 %, validation 10 % of the rest, train the remainder (INTERFACES.md); a fixed seed.
DIGITS_SPLIT_SEED = 0
DIGITS_IMAGE_SIZE = 16
# CIFAR-10 / GTSRB: validation = a seeded hold-out of the official training set, at most this many images
# (REFERENCE §4: ~1024 images to pick the best checkpoint) and never more than a tenth of the training set.
HOLDOUT_SIZE = 1024
HOLDOUT_SEED = 0

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
GTSRB_DIR = "gtsrb"
GTSRB_IMAGE_SIZE = 32
IMAGE_SUFFIXES = frozenset({".ppm", ".png", ".jpg", ".jpeg", ".bmp"})


def _check_split(split: str) -> None:
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")


def load_dataset(name: str, split: Split, *, root: Path | str | None = None) -> ImageDataset:
    """Load split ``split`` of dataset ``name`` ("digits", "cifar10" or "gtsrb").

    ``root`` is the data root (CIFAR-10 under ``root/cifar-10-batches-py``, GTSRB under ``root/gtsrb``);
    digits ship with scikit-learn and need none.
    """
    _check_split(split)
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    if name == "digits":
        return load_digits(split)
    if root is None:
        raise ValueError(f"dataset {name!r} needs a data root (root=...)")
    if name == "cifar10":
        return load_cifar10(split, root=Path(root))
    return load_gtsrb(split, root=Path(root))


# ---------------------------------------------------------------------------------------------------- digits


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 scikit-learn digits as uint8 N x 16 x 16 x 1 (values 0..16 scaled to 0..255, then bilinear 2x
    upsampling so a UNet can halve the size twice) and int64 labels."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0))  # N x 8 x 8 in 0..255
    big = F.interpolate(small[:, None], size=(DIGITS_IMAGE_SIZE,) * 2, mode="bilinear", align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8)[:, 0, :, :, None].numpy()  # N x 16 x 16 x 1
    return np.ascontiguousarray(images), bunch.target.astype(np.int64)


def load_digits(split: Split) -> ImageDataset:
    """scikit-learn's digits at 16 x 16; seeded stratified split (test 20 %, val 10 % of the rest)."""
    _check_split(split)
    images, labels = digits_images()
    test, val, train = seeded_split(labels, fractions=(0.2, 0.1), seed=DIGITS_SPLIT_SEED)
    index = {"train": train, "val": val, "test": test}[split]
    info = DatasetInfo(
        name="digits",
        num_classes=10,
        image_size=DIGITS_IMAGE_SIZE,
        channels=1,
        class_names=tuple(str(d) for d in range(10)),
    )
    return ImageDataset(images[index], labels[index], info)


def _holdout(images: np.ndarray, labels: np.ndarray, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Split an official training set into train / val by a seeded hold-out of ``HOLDOUT_SIZE`` images."""
    size = min(HOLDOUT_SIZE, len(labels) // 10)
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(labels))
    index = np.sort(order[:size] if split == "val" else order[size:])
    return images[index], labels[index]


# --------------------------------------------------------------------------------------------------- CIFAR-10

# The only globals an official CIFAR-10 batch (or one numpy writes today) may reference when unpickled.
_PICKLE_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the numpy array reconstruction globals in ``_PICKLE_ALLOWED``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def restricted_unpickle(path: Path) -> Any:
    """Unpickle ``path`` allowing builtin containers and numpy arrays only (ValueError otherwise)."""
    try:
        with open(path, "rb") as handle:
            return _RestrictedUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable CIFAR-10 batch ({exc})") from exc


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official batch file (a pickled dict with b'data' uint8 N x 3072 and b'labels') as NHWC + labels."""
    if not path.is_file():
        raise ValueError(f"{path}: CIFAR-10 batch file missing")
    batch = restricted_unpickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise ValueError(f"{path}: missing key b'{key}'")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise ValueError(f"{path}: b'data' must be a uint8 array, got {getattr(data, 'dtype', type(data))}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be N x 3072, got shape {data.shape}")
    raw_labels = np.asarray(batch["labels"])
    if raw_labels.ndim != 1 or raw_labels.size == 0:
        raise ValueError(f"{path}: b'labels' must be a non-empty list of ints, got shape {raw_labels.shape}")
    labels = as_labels(raw_labels, source=str(path))
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # N x 32 x 32 x 3
    check_images_labels(np.ascontiguousarray(images), labels, num_classes=10, source=str(path))
    return np.ascontiguousarray(images), labels


def load_cifar10(split: Split, *, root: Path) -> ImageDataset:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (data_batch_1..5, test_batch); val = a hold-out of train."""
    _check_split(split)
    folder = Path(root) / CIFAR10_DIR
    if not folder.is_dir():
        raise ValueError(f"CIFAR-10 not found: {folder} is not a directory (see download_cifar10)")
    if split == "test":
        images, labels = read_cifar10_batch(folder / "test_batch")
    else:
        parts = [read_cifar10_batch(folder / f"data_batch_{k}") for k in range(1, 6)]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        images, labels = _holdout(images, labels, split)
    info = DatasetInfo("cifar10", num_classes=10, image_size=32, channels=3, class_names=CIFAR10_CLASSES)
    return ImageDataset(images, labels, info)


def download_cifar10(root: Path, *, url: str = CIFAR10_URL, timeout: float = 60.0) -> Path:
    """Fetch and unpack the official CIFAR-10 python archive into ``root`` (only when asked; needs internet).

    Only the expected regular files are extracted (no links, no paths outside ``cifar-10-batches-py``).
    """
    target = Path(root) / CIFAR10_DIR
    if target.is_dir():
        return target
    logger.info("downloading CIFAR-10 from %s", url)
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed https URL
        payload = response.read()
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
        members = [
            m
            for m in archive.getmembers()
            if m.isfile() and re.fullmatch(rf"{CIFAR10_DIR}/[A-Za-z0-9_.]+", m.name) is not None
        ]
        if not members:
            raise ValueError(f"{url}: archive holds no {CIFAR10_DIR}/ files")
        archive.extractall(Path(root), members=members, filter="data")
    return target


# ------------------------------------------------------------------------------------------------------ GTSRB


def _class_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"GTSRB split folder missing: {folder}")
    classes = sorted(
        (p for p in folder.iterdir() if p.is_dir()), key=lambda p: (not p.name.isdigit(), p.name)
    )
    if not classes:
        raise ValueError(f"{folder}: no class sub-folders")
    return classes


def _read_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc


def load_gtsrb(split: Split, *, root: Path, image_size: int = GTSRB_IMAGE_SIZE) -> ImageDataset:
    """Traffic signs from ``root/gtsrb/{train,test}/<class>/<image>``, resized to ``image_size`` by PIL.

    Class ids follow the sorted names of the *training* class folders (numeric names numerically ordered,
    as in GTSRB's ``00000``..``00042``); val is a seeded hold-out of train.
    """
    _check_split(split)
    base = Path(root) / GTSRB_DIR
    class_names = [p.name for p in _class_folders(base / "train")]
    folder = base / ("test" if split == "test" else "train")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for class_folder in _class_folders(folder):
        if class_folder.name not in class_names:
            raise ValueError(f"{class_folder}: class not present in {base / 'train'}")
        label = class_names.index(class_folder.name)
        for path in sorted(class_folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(_read_image(path, image_size))
                labels.append(label)
    if not images:
        raise ValueError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    stacked, label_array = np.stack(images), np.asarray(labels, dtype=np.int64)
    if split != "test":
        stacked, label_array = _holdout(stacked, label_array, split)
    info = DatasetInfo("gtsrb", len(class_names), image_size, 3, class_names=tuple(class_names))
    return ImageDataset(stacked, label_array, info)


# -------------------------------------------------------------------------------------------- npz and shards

_SHARD_NAME = re.compile(r"(\d+)\.npz")


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


def load_synthetic(
    paths: Sequence[Path | str], *, num_classes: int | None = None, name: str = "synthetic"
) -> ImageDataset:
    """Concatenate npz files and shard directories (``<k>.npz``, as generation jobs write them) into one set.

    All parts must share image size and channels; ``num_classes`` as in :func:`load_npz`.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise ValueError("load_synthetic: no paths given")
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += shard_files(path)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or directory")
    image_parts: list[np.ndarray] = []
    label_parts: list[np.ndarray] = []
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
    images: np.ndarray, labels: np.ndarray, *, num_classes: int | None, name: str, source: str
) -> ImageDataset:
    if num_classes is not None and int(labels.max()) >= num_classes:
        raise ValueError(f"{source}: label {int(labels.max())} out of range for {num_classes} classes")
    classes = num_classes if num_classes is not None else int(labels.max()) + 1
    info = DatasetInfo(name, num_classes=classes, image_size=images.shape[1], channels=images.shape[3])
    return ImageDataset(np.ascontiguousarray(images), labels, info)
