"""The splits of an uploaded data set, read from the canonical npz that
:func:`core.formats.uploads.validate_upload` wrote. With the upload's own ``split`` marks, ``test`` is the
rows marked test; otherwise a fixed seeded stratified split takes 20 % of each class as ``test``. ``val`` is
a seeded 10 % of the rest (over all classes: small classes would round to none) and ``train`` the
remainder. Seed 0 throughout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.dataset import DatasetInfo, ImageDataset, seeded_split

SPLIT_SEED = 0
TEST_FRACTION, VAL_FRACTION = 0.2, 0.1


def load_uploaded(path: Path | str, split: str, *, name: str, class_names: list[str] | None = None,
                  num_classes: int | None = None) -> ImageDataset:
    """Split ``split`` (train, val, test) of a canonical npz written by :func:`validate_upload`."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"an uploaded data set has the splits train, val and test, not {split!r}")
    with np.load(path, allow_pickle=False) as npz:
        images, labels = npz["image"], npz["label"]
        marks = npz["split"] if "split" in npz.files else None
    if marks is not None:
        test, rest = np.flatnonzero(marks == 1), np.flatnonzero(marks == 0)
    else:
        test, rest = seeded_split(labels, fractions=(TEST_FRACTION,), seed=SPLIT_SEED)
    # val: a seeded 10 % of the rest (not per class: small classes would round to none)
    val_pos, train_pos = seeded_split(labels[rest], fractions=(VAL_FRACTION,), seed=SPLIT_SEED,
                                      stratify=False)
    parts = {"test": test, "val": rest[val_pos], "train": rest[train_pos]}
    index = parts[split]
    if len(index) == 0:
        raise ValueError(f"{name}: its {split} split is empty (too few images per class)")
    k = num_classes or (len(class_names) if class_names else int(labels.max()) + 1)
    info = DatasetInfo(name, num_classes=k, image_size=images.shape[1], channels=images.shape[3],
                       class_names=tuple(class_names) if class_names else ())
    return ImageDataset(np.ascontiguousarray(images[index]), labels[index].astype(np.int64), info)
