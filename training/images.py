"""Sample grids: [-1, 1] image batches to one uint8 picture, written as PNG."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Maps [-1, 1] floats to [0, 255] uint8 (values outside are clipped)."""
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def make_grid(images: np.ndarray, num_rows: int | None = None, padding: int = 1) -> np.ndarray:
    """Tiles [N, H, W, C] images into one [rows*(H+p)+p, cols*(W+p)+p, C] uint8 grid."""
    count, height, width, channels = images.shape
    rows = num_rows or int(math.ceil(math.sqrt(count)))
    cols = int(math.ceil(count / rows))
    grid = np.zeros(
        (rows * (height + padding) + padding, cols * (width + padding) + padding, channels),
        np.uint8,
    )
    pixels = to_uint8(images)
    for index in range(count):
        row, col = divmod(index, cols)
        top = padding + row * (height + padding)
        left = padding + col * (width + padding)
        grid[top : top + height, left : left + width] = pixels[index]
    return grid


def save_png(grid: np.ndarray, path: str, upscale: int = 1) -> None:
    """Writes a uint8 grid as PNG, enlarged `upscale` times with nearest-neighbour pixels."""
    if upscale > 1:
        grid = grid.repeat(upscale, axis=0).repeat(upscale, axis=1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
