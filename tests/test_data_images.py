"""The one uint8 NHWC -> float conversion and the one preview grid."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.images import grid_png, image_grid, to_signed, to_unit


def test_ranges_and_layout() -> None:
    images = np.zeros((2, 3, 4, 1), dtype=np.uint8)
    images[0, 1, 2, 0] = 255
    images[1, 0, 0, 0] = 51
    unit, signed = to_unit(images), to_signed(torch.from_numpy(images))
    assert unit.shape == (2, 1, 3, 4) and unit.dtype == torch.float32
    assert unit[0, 0, 1, 2] == 1.0 and unit[1, 0, 0, 0] == pytest.approx(0.2)
    assert signed.min() == -1.0 and signed[0, 0, 1, 2] == 1.0
    torch.testing.assert_close(signed, unit * 2 - 1)


def test_grid_places_every_tile_and_scales_to_the_minimum_side() -> None:
    images = np.stack([np.full((4, 4, 1), 10 * (k + 1), dtype=np.uint8) for k in range(3)])
    grid = image_grid(images, columns=2, scale=1, gap=1, background=7)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1)
    assert grid[1, 1] == 10 and grid[1, 6] == 20 and grid[6, 1] == 30
    assert grid[0, 0] == 7 and grid[6, 6] == 7  # border and the empty fourth tile
    scaled = image_grid(images, columns=2)
    assert max(scaled.shape) >= 256 and scaled.shape[0] % grid.shape[0] == 0
    picture = Image.open(io.BytesIO(grid_png(np.repeat(images, 3, axis=3), columns=3)))
    assert picture.mode == "RGB" and max(picture.size) >= 256


def test_grid_refuses_float_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        image_grid(np.zeros((1, 4, 4, 1), dtype=np.float32))
