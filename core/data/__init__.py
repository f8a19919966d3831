"""Datasets as uint8 NHWC arrays with int64 labels: digits, MNIST-5k, CIFAR-10, GTSRB, npz files and
generation shards.

``from core.data import load_dataset`` is the entry point; see :mod:`core.data.loaders` for the named datasets
and :mod:`core.data.files` for npz files, shards and ``.npy`` pairs.
"""

from core.data.dataset import (
    DatasetInfo,
    ImageDataset,
    channel_stats,
    check_images_labels,
    seeded_split,
    stratified_prefix,
)
from core.data.files import load_npz, load_synthetic, shard_files
from core.data.loaders import (
    DATASET_NAMES,
    PACKAGED_DATASETS,
    download_cifar10,
    load_cifar10,
    load_dataset,
    load_digits,
    load_gtsrb,
    load_mnist5k,
    read_cifar10_batch,
)

__all__ = [
    "DATASET_NAMES",
    "PACKAGED_DATASETS",
    "DatasetInfo",
    "ImageDataset",
    "channel_stats",
    "check_images_labels",
    "download_cifar10",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_gtsrb",
    "load_mnist5k",
    "load_npz",
    "load_synthetic",
    "read_cifar10_batch",
    "seeded_split",
    "stratified_prefix",
    "shard_files",
]
