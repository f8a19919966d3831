"""Good and bad upload files for the dataset tests (bytes, built in memory)."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np


def npz(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def good_arrays(n: int = 60, size: int = 16, channels: int = 1, classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % classes
    return images, labels


def good_npz(**kw: object) -> bytes:
    images, labels = good_arrays(**kw)  # type: ignore[arg-type]
    return npz(image=images, label=labels)


def png(size: tuple[int, int], value: int, mode: str = "L") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def folder_zip(classes: int = 3, per_class: int = 4, size: int = 8, mode: str = "L", top: str = "") -> bytes:
    return zip_of({f"{top}c{c}/{i}.png": png((size, size), 20 * c + i, mode)
                   for c in range(classes) for i in range(per_class)})


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def _bomb() -> bytes:
    """A member that inflates to 8 MiB from a few KiB."""
    return zip_of({"image.npy": b"\0" * (8 << 20), "label.npy": b"\0" * 10})


def _lying_size() -> bytes:
    """A member whose declared uncompressed size is small but that inflates to far more."""
    data = bytearray(zip_of({"image.npy": b"\0" * (8 << 20), "label.npy": b"x"}))
    # patch the declared size (central directory and local header) of the first member down to 100 bytes
    raw = bytes(data)
    real = (8 << 20).to_bytes(4, "little")
    return raw.replace(real, (100).to_bytes(4, "little"))


def _short_image_member() -> bytes:
    """An image.npy whose header declares 60 images but whose data holds 30."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (60, 16, 16, 1)})
    label = io.BytesIO()
    np.save(label, np.arange(60) % 10)
    return zip_of({"image.npy": header.getvalue() + b"\0" * (30 * 256), "label.npy": label.getvalue()})


def bad_files() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, the errors[].field the API must name)."""
    images, labels = good_arrays()
    return {
        "float images": (npz(image=images.astype(np.float32), label=labels), "body.file.image"),
        "int16 images": (npz(image=images.astype(np.int16), label=labels), "body.file.image"),
        "four channels": (npz(image=np.zeros((4, 8, 8, 4), np.uint8), label=np.zeros(4, np.int64)),
                          "body.file.image"),
        "zero images": (npz(image=np.zeros((0, 8, 8, 1), np.uint8), label=np.zeros(0, np.int64)),
                        "body.file.image"),
        "zero size": (npz(image=np.zeros((4, 0, 0, 1), np.uint8), label=np.zeros(4, np.int64)),
                      "body.file.image"),
        "not square": (npz(image=np.zeros((4, 8, 6, 1), np.uint8), label=np.zeros(4, np.int64)),
                       "body.file.image"),
        "2-d images": (npz(image=np.zeros((4, 64), np.uint8), label=np.zeros(4, np.int64)),
                       "body.file.image"),
        "channels first": (npz(image=np.zeros((4, 3, 8, 8), np.uint8), label=np.zeros(4, np.int64)),
                           "body.file.image"),
        "image data shorter than its header": (_short_image_member(), "body.file.image"),
        "object array beside the images": (npz(image=images, label=labels, meta=np.array([{}], dtype=object)),
                                           "body.file.meta"),
        "float labels": (npz(image=images, label=labels.astype(np.float64)), "body.file.label"),
        "bool labels": (npz(image=images, label=labels > 3), "body.file.label"),
        "negative label": (npz(image=images, label=labels - 1), "body.file.label"),
        "too few labels": (npz(image=images, label=labels[:-1]), "body.file.label"),
        "2-d labels": (npz(image=images, label=labels.reshape(-1, 2)), "body.file.label"),
        "ragged (object) images": (npz(image=np.array([np.zeros((2, 2)), np.zeros((3, 3))], dtype=object),
                                       label=np.zeros(2, np.int64)), "body.file.image"),
        "object labels": (npz(image=images, label=labels.astype(object)), "body.file.label"),
        "pickle with code": (pickle.dumps(_Evil()), "body.file"),
        "pickle inside an npy member": (zip_of({"image.npy": pickle.dumps(_Evil()), "label.npy": b"x"}),
                                        "body.file.image"),
        "missing keys": (npz(pixels=images, label=labels), "body.file"),
        "bad split values": (npz(image=images, label=labels, split=np.array(["train", "dev"] * 30)),
                             "body.file.split"),
        "split with only train": (npz(image=images, label=labels, split=np.zeros(60, np.int64)),
                                  "body.file.split"),
        "not a zip": (b"hello, I am not an npz", "body.file"),
        "empty file": (b"", "body.file"),
        "zip slip ..": (zip_of({"../evil/0.png": png((8, 8), 1), "a/0.png": png((8, 8), 1)}), "body.file"),
        "zip absolute path": (zip_of({"/etc/0.png": png((8, 8), 1), "a/0.png": png((8, 8), 1)}), "body.file"),
        "zip bomb (declared size)": (_bomb(), "body.file"),
        "zip bomb (lying size)": (_lying_size(), "body.file.image"),
        "mixed image sizes": (zip_of({"a/0.png": png((8, 8), 1), "b/0.png": png((16, 16), 1)}), "body.file"),
        "not an image in a folder": (zip_of({"a/0.png": png((8, 8), 1), "a/notes.txt": b"hi"}), "body.file"),
        "corrupt png": (zip_of({"a/0.png": png((8, 8), 1), "b/0.png": b"\x89PNG garbage"}), "body.file"),
    }
