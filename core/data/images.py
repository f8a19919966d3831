"""The one conversion from stored images to model inputs, and the one picture of a batch of them.

Stored images are ``uint8`` N x H x W x C (the convention of :mod:`core.data.dataset`); classifiers take
float N x C x H x W in [0, 1] and diffusion models the same in [-1, 1]. Every conversion in the project goes
through :func:`to_unit` or :func:`to_signed`, so the two ranges are written down once. :func:`image_grid` and
:func:`grid_png` draw the preview grids of the CLI and of generation jobs (numpy and Pillow only).
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    Images = torch.Tensor | np.ndarray
    Device = str | torch.device | None


def _nchw(images_uint8_nhwc: Images, device: Device) -> torch.Tensor:
    import torch

    if isinstance(images_uint8_nhwc, np.ndarray):
        images_uint8_nhwc = torch.from_numpy(np.ascontiguousarray(images_uint8_nhwc))
    if device is not None:
        images_uint8_nhwc = images_uint8_nhwc.to(device)
    return images_uint8_nhwc.permute(0, 3, 1, 2).float()


def to_unit(images_uint8_nhwc: Images, device: Device = None) -> torch.Tensor:
    """uint8 N x H x W x C (array or tensor) -> float32 N x C x H x W in [0, 1], the classifiers' range."""
    return _nchw(images_uint8_nhwc, device).div_(255.0)


def to_signed(images_uint8_nhwc: Images, device: Device = None) -> torch.Tensor:
    """uint8 N x H x W x C (array or tensor) -> float32 N x C x H x W in [-1, 1], the diffusion range."""
    return _nchw(images_uint8_nhwc, device).div_(127.5).sub_(1.0)


def image_grid(
    images: np.ndarray,
    *,
    columns: int = 10,
    max_images: int = 100,
    scale: int | None = None,
    min_side: int = 256,
    gap: int = 1,
    background: int = 64,
) -> np.ndarray:
    """uint8 N x H x W x C -> one uint8 picture: rows of ``columns`` tiles with ``gap``-pixel grey borders.

    ``scale`` enlarges each pixel to a block (nearest neighbour); by default, the smallest whole factor that
    makes the longer side at least ``min_side`` pixels. One channel gives an H x W picture, three H x W x 3.
    """
    shown = np.asarray(images)[:max_images]
    if shown.ndim != 4 or shown.dtype != np.uint8:
        raise ValueError(f"expected uint8 N x H x W x C images, got {shown.dtype} of shape {shown.shape}")
    n, h, w, c = shown.shape
    rows = max(1, math.ceil(n / columns))
    grid = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, c), background, dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, columns)
        top, left = gap + r * (h + gap), gap + col * (w + gap)
        grid[top : top + h, left : left + w] = shown[k]
    if scale is None:
        scale = max(1, math.ceil(min_side / max(grid.shape[:2])))
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid[..., 0] if c == 1 else grid


def grid_png(images: np.ndarray, **kwargs: int | None) -> bytes:
    """:func:`image_grid` encoded as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_grid(images, **kwargs)).save(buffer, format="PNG")  # type: ignore[arg-type]
    return buffer.getvalue()
