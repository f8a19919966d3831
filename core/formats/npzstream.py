"""npz files written and inspected without holding their arrays in memory.

:class:`NpzWriter` writes an ``.npz`` (a zip of ``.npy`` members, what ``np.savez`` writes and ``np.load``
reads) member by member: the ``.npy`` header first, from the dtype and shape the caller declares, then the
rows in as many pieces as the caller likes, so a set larger than memory is written piece by piece (a
generation job's export, shard by shard; an image folder, image by image). A member whose rows do not add
up to its declared shape is an error.

:func:`read_npy_header` reads the dtype and shape of an ``.npy`` stream without its data (and refuses a
header that needs ``allow_pickle``: object dtypes).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
from numpy.lib import format as npy_format


class NpzWriter:
    """``with NpzWriter(path) as npz: with npz.array("image", np.uint8, (n, h, w, c)) as add: add(rows)``.

    Members are stored uncompressed (as ``np.savez`` does), with zip64 so members over 4 GiB work.
    """

    def __init__(self, target: Path | str | BinaryIO) -> None:
        self._zip = zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    @contextmanager
    def array(self, name: str, dtype: np.dtype | type, shape: tuple[int, ...]) -> Iterator[RowSink]:
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise ValueError(f"{name}: object arrays are not written (they would need pickle)")
        header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": tuple(int(n) for n in shape)}
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as member:
            npy_format.write_array_header_2_0(member, header) if _needs_v2(header) else \
                npy_format.write_array_header_1_0(member, header)
            sink = RowSink(member, name, dtype, header["shape"])
            yield sink
            sink.finish()

    def write(self, name: str, array: np.ndarray) -> None:
        """A whole (small) array as one member."""
        array = np.ascontiguousarray(array)
        with self.array(name, array.dtype, array.shape) as add:
            add(array)


def _needs_v2(header: dict) -> bool:
    return len(repr(header)) > 60_000


class RowSink:
    """Takes the rows of one member (arrays whose trailing dimensions match the declared shape)."""

    def __init__(self, member: IO[bytes], name: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.member, self.name, self.dtype, self.shape = member, name, dtype, shape
        self.rows = 0

    def __call__(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim == len(self.shape) - 1 and len(self.shape) >= 1:
            rows = rows[None]
        if rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.name}: rows of shape {rows.shape[1:]}, declared {self.shape[1:]}")
        if self.rows + len(rows) > (self.shape[0] if self.shape else 1):
            raise ValueError(f"{self.name}: more rows than the declared {self.shape[0]}")
        self.member.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += len(rows)

    def finish(self) -> None:
        expected = self.shape[0] if self.shape else 1
        if self.rows != expected:
            raise ValueError(f"{self.name}: {self.rows} rows written, {expected} declared")


def read_npy_header(stream: IO[bytes]) -> tuple[np.dtype, tuple[int, ...], bool]:
    """(dtype, shape, fortran_order) of an ``.npy`` stream, positioned after the header. ``ValueError`` for
    anything that is not a plain ``.npy`` header or whose dtype holds Python objects."""
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
    else:  # pragma: no cover - numpy's read_magic accepts only these
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError(f"dtype {dtype} holds Python objects (it would need allow_pickle)")
    return dtype, tuple(int(n) for n in shape), bool(fortran)
