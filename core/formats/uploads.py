"""Uploaded data sets: validation of an ``.npz`` or a zip of an image folder, written to one canonical npz,
written to one canonical npz. Neither torch nor storage here: the API runs it (:mod:`core.jobs.datasets`);
the splits of such a set are read by :func:`core.data.uploaded.load_uploaded`.

Accepted uploads:

- an ``.npz`` with ``image`` (uint8, N x H x W x C with C in {1, 3}, or N x H x W) and ``label`` (integers
  0..K-1, N of them), or ``arr_0`` / ``arr_1``; optionally ``split`` (N entries, ``"train"`` / ``"test"`` or
  0 / 1). Read member by member (headers with :func:`core.formats.npzstream.read_npy_header`, never
  ``allow_pickle``): object arrays, pickles and anything that is not a plain ``.npy`` are refused;
- a zip of an image folder: ``<class>/<image>`` (png, jpg, jpeg, bmp, ppm), or ``train/<class>/<image>`` and
  ``test/<class>/<image>``, optionally under one top folder. Labels are the class folders in sorted order;
  every image must have the first image's size; grey images give C = 1, otherwise RGB (C = 3).

Every problem raises :class:`UploadError` with the field it concerns (``file``, ``file.image``,
``file.label``, ``file.split``, ``num_classes``). Zip members with absolute paths or ``..`` are refused, and
the uncompressed size is bounded twice: the sizes the archive declares, and the bytes actually inflated.

The splits of such a set: :mod:`core.data.uploaded` (the upload's own train/test marks, or a fixed seeded
stratified split).
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from core.formats.npzstream import NpzWriter, read_npy_header

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm"})
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_CLASSES = 100_000
_SPLIT_NAMES = ("train", "test")
_PIECE = 1 << 20


class UploadError(ValueError):
    """A bad upload; ``field`` names what is wrong (``file``, ``file.image``, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


@dataclass
class UploadSummary:
    num_images: int
    image_shape: list[int]
    num_classes: int
    class_counts: list[int]
    class_names: list[str] | None = None
    has_split: bool = False
    split_counts: dict[str, int] = field(default_factory=dict)


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename
    path = PurePosixPath(name)
    drive = len(name) > 1 and name[1] == ":"
    if name.startswith(("/", "\\")) or "\\" in name or drive or ".." in path.parts:
        raise UploadError("file", f"zip member {name[:80]!r} has an absolute path or '..'; refused")
    return path


def _open_zip(source: BinaryIO, max_uncompressed: int) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise UploadError("file", "not an npz file nor a zip of an image folder") from None
    declared = 0
    for info in archive.infolist():
        _member_path(info)
        if info.flag_bits & 0x1:
            raise UploadError("file", f"zip member {info.filename[:80]!r} is encrypted")
        declared += info.file_size
    if declared > max_uncompressed:
        raise UploadError("file", f"the archive declares {declared} uncompressed bytes, over the limit of "
                          f"{max_uncompressed}")
    return archive


class _Budget:
    """Counts the bytes actually inflated across the archive (a member may lie about its size)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def read(self, stream: BinaryIO, n: int, what: str) -> bytes:
        data = stream.read(n)
        self.used += len(data)
        if self.used > self.limit:
            raise UploadError("file", f"{what}: uncompressed content exceeds the limit of {self.limit} bytes")
        return data


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> bytes:
    parts = []
    try:
        with archive.open(info) as stream:
            while chunk := budget.read(stream, _PIECE, info.filename[:80]):
                parts.append(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise UploadError("file", f"zip member {info.filename[:80]!r} is corrupt ({exc})") from None
    return b"".join(parts)


def validate_upload(source: BinaryIO, target: Path, *, max_uncompressed: int, num_classes: int | None = None
                    ) -> UploadSummary:
    """Check ``source`` (a seekable upload) and write the canonical npz (``image`` uint8 NHWC, ``label``
    int64, optionally ``split`` uint8 0 = train / 1 = test) to ``target``."""
    archive = _open_zip(source, max_uncompressed)
    names = [i for i in archive.infolist() if not i.is_dir()]
    if not names:
        raise UploadError("file", "the archive is empty")
    if all(i.filename.endswith(".npy") for i in names):
        summary = _npz(archive, target, _Budget(max_uncompressed))
    else:
        summary = _image_folder(archive, names, target, _Budget(max_uncompressed))
    if num_classes is not None:
        if summary.num_classes > num_classes:
            raise UploadError("file.label", f"label {summary.num_classes - 1} is out of range for "
                              f"num_classes={num_classes} (labels are 0..{num_classes - 1})")
        summary.class_counts += [0] * (num_classes - summary.num_classes)
        summary.num_classes = num_classes
    return summary


def _npz(archive: zipfile.ZipFile, target: Path, budget: _Budget) -> UploadSummary:
    members = {PurePosixPath(i.filename).name.removesuffix(".npy"): i for i in archive.infolist()
               if not i.is_dir()}
    if {"image", "label"} <= members.keys():
        image_key, label_key = "image", "label"
    elif {"arr_0", "arr_1"} <= members.keys():
        image_key, label_key = "arr_0", "arr_1"
    else:
        raise UploadError("file", f"an npz needs the arrays image and label (or arr_0, arr_1); found "
                          f"{sorted(members)[:10]}")
    headers = {}
    for name, info in members.items():
        try:
            with archive.open(info) as stream:
                headers[name] = read_npy_header(stream)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise UploadError(f"file.{name}", f"{name}: not a plain .npy array ({str(exc)[:120]})") from None
    dtype, shape, fortran = headers[image_key]
    if dtype != np.uint8:
        raise UploadError("file.image", f"image must be uint8, got {dtype}")
    if len(shape) == 3:
        shape = (*shape, 1)
    if len(shape) != 4 or shape[3] not in (1, 3):
        hint = " (channels first? store N x H x W x C)" if len(shape) == 4 and shape[1] in (1, 3) else ""
        raise UploadError("file.image", f"image must be N x H x W x C with C in {{1, 3}}, got shape "
                          f"{shape}{hint}")
    if min(shape) == 0:
        raise UploadError("file.image", f"image is empty (shape {shape})")
    if shape[1] * shape[2] > MAX_IMAGE_PIXELS:
        raise UploadError("file.image", f"images of {shape[1]} x {shape[2]} exceed {MAX_IMAGE_PIXELS} pixels")
    if shape[1] != shape[2]:
        raise UploadError("file.image", f"images must be square (H == W), got {shape[1]} x {shape[2]}")
    if fortran:
        raise UploadError("file.image", "image is stored in Fortran order; save np.ascontiguousarray(image)")
    labels = _small_array(archive, members[label_key], budget, "label")
    if labels.dtype.kind not in "iu" or labels.dtype == np.bool_:
        raise UploadError("file.label", f"label must be integers, got {labels.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:  # N x 1 (a column of labels)
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != shape[0]:
        raise UploadError("file.label", f"label must hold one integer per image ({shape[0]}), got shape "
                          f"{labels.shape}")
    if labels.min() < 0 or labels.max() >= MAX_CLASSES:
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise UploadError("file.label", f"label {bad} is out of range (labels are 0..K-1, K <= "
                          f"{MAX_CLASSES})")
    labels = labels.astype(np.int64)
    split = _split(archive, members, budget, len(labels)) if "split" in members else None
    with NpzWriter(target) as out:
        try:
            _copy_images(archive, members[image_key], shape, out, budget, image_key)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            if isinstance(exc, UploadError):
                raise
            raise UploadError("file.image", f"image: its data does not fill the declared shape {shape} "
                              f"({str(exc)[:80]})") from None
        out.write("label", labels)
        if split is not None:
            out.write("split", split)
    return _summary(labels, list(shape[1:]), None, split)


def _copy_images(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shape: tuple[int, ...], out: NpzWriter,
                 budget: _Budget, name: str) -> None:
    with out.array("image", np.uint8, shape) as add, archive.open(info) as stream:
        read_npy_header(stream)
        row = shape[1] * shape[2] * shape[3]
        pending = b""
        rows_per_piece = max(1, _PIECE // row)
        while chunk := budget.read(stream, rows_per_piece * row, name):
            pending += chunk
            whole = len(pending) // row
            if whole:
                add(np.frombuffer(pending[:whole * row], np.uint8).reshape(whole, *shape[1:]))
                pending = pending[whole * row:]
        if pending:
            raise ValueError(f"{len(pending)} bytes beyond the last whole image")


def _small_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget, name: str) -> np.ndarray:
    raw = _read_member(archive, info, budget)
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UploadError(f"file.{name}", f"{name}: not a readable array ({str(exc)[:120]})") from None


def _split(archive: zipfile.ZipFile, members: dict, budget: _Budget, n: int) -> np.ndarray:
    raw = _small_array(archive, members["split"], budget, "split")
    if raw.ndim != 1 or len(raw) != n:
        raise UploadError("file.split", f"split must hold one entry per image ({n}), got shape {raw.shape}")
    if raw.dtype.kind == "U":
        bad = sorted(set(np.unique(raw).tolist()) - set(_SPLIT_NAMES))
        if bad:
            raise UploadError("file.split", f"split entries must be 'train' or 'test', got {bad[:3]}")
        return (raw == "test").astype(np.uint8)
    if raw.dtype.kind in "iu" and raw.dtype != np.bool_:
        if raw.min() < 0 or raw.max() > 1:
            raise UploadError("file.split", "split entries must be 0 (train) or 1 (test)")
        return raw.astype(np.uint8)
    raise UploadError("file.split", f"split must be strings train/test or integers 0/1, got {raw.dtype}")


def _summary(labels: np.ndarray, image_shape: list[int], class_names: list[str] | None,
             split: np.ndarray | None) -> UploadSummary:
    k = len(class_names) if class_names else int(labels.max()) + 1
    counts = np.bincount(labels, minlength=k).tolist()
    summary = UploadSummary(num_images=int(len(labels)), image_shape=image_shape, num_classes=k,
                            class_counts=counts, class_names=class_names, has_split=split is not None)
    if split is not None:
        summary.split_counts = {"train": int((split == 0).sum()), "test": int((split == 1).sum())}
        if min(summary.split_counts.values()) == 0:
            raise UploadError("file.split", f"every split needs images, got {summary.split_counts}")
    return summary


def _image_folder(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], target: Path, budget: _Budget
                  ) -> UploadSummary:
    from PIL import Image, UnidentifiedImageError

    files = [(PurePosixPath(i.filename), i) for i in members
             if not any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(i.filename).parts)]
    depths = {len(p.parts) for p, _ in files}
    tops = {p.parts[0] for p, _ in files}
    strip = 1 if len(tops) == 1 and min(depths) >= 3 and tops.isdisjoint(_SPLIT_NAMES) else 0
    rel = [(PurePosixPath(*p.parts[strip:]), i) for p, i in files]
    split_layout = (all(len(p.parts) == 3 for p, _ in rel)
                    and {p.parts[0] for p, _ in rel} <= set(_SPLIT_NAMES))
    entries = []  # (split, class, info)
    for path, info in rel:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UploadError("file", f"zip member {info.filename[:80]!r} is not an image "
                              f"({', '.join(sorted(IMAGE_SUFFIXES))}) nor an .npy array")
        if split_layout:
            entries.append((path.parts[0], path.parts[1], info))
        elif len(path.parts) == 2:
            entries.append(("train", path.parts[0], info))
        else:
            raise UploadError("file", f"zip member {info.filename[:80]!r}: expected <class>/<image> or "
                              "train|test/<class>/<image>")
    classes = sorted({c for _, c, _ in entries})
    if len(classes) < 1:
        raise UploadError("file", "no class folders found")
    entries.sort(key=lambda entry: (entry[0], entry[1], entry[2].filename))
    first_size, grey = None, True
    for _, _, info in entries:  # headers only: sizes and modes
        try:
            with Image.open(io.BytesIO(_read_member(archive, info, budget))) as im:
                size, mode = im.size, im.mode
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise UploadError("file", f"{info.filename[:80]!r} is not a readable image ({exc})") from None
        if size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise UploadError("file", f"{info.filename[:80]!r} has {size[0]} x {size[1]} pixels, over "
                              f"{MAX_IMAGE_PIXELS}")
        first_size = first_size or size
        if size != first_size:
            raise UploadError("file", f"images of mixed size: {info.filename[:80]!r} is {size[0]} x "
                              f"{size[1]}, the first image {first_size[0]} x {first_size[1]}")
        grey = grey and mode in ("1", "L", "I", "I;16", "F")
    assert first_size is not None
    if first_size[0] != first_size[1]:
        raise UploadError("file", f"images must be square, got {first_size[0]} x {first_size[1]}")
    channels = 1 if grey else 3
    shape = (len(entries), first_size[1], first_size[0], channels)
    budget.used = 0  # the second pass reads the same bytes again
    if split_layout and {s for s, _, _ in entries} != set(_SPLIT_NAMES):
        raise UploadError("file", "a train/test layout needs both train/ and test/ folders")
    with NpzWriter(target) as out:
        with out.array("image", np.uint8, shape) as add:
            for _, _, info in entries:
                with Image.open(io.BytesIO(_read_member(archive, info, budget))) as im:
                    pixels = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8)
                add(pixels.reshape(shape[1:]))
        labels = np.array([classes.index(c) for _, c, _ in entries], dtype=np.int64)
        out.write("label", labels)
        split = np.array([s == "test" for s, _, _ in entries], dtype=np.uint8) if split_layout else None
        if split is not None:
            out.write("split", split)
    return _summary(labels, list(shape[1:]), classes, split)
