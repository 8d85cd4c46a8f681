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


def load_image(path: str, size: int, channels: int) -> np.ndarray:
    """An image file as float32 [size, size, channels] in [-1, 1]: centre-cropped to a square,
    resized with Lanczos (as diffusers' image processor), grey or RGB."""
    with Image.open(path) as image:
        image = _square(image.convert("L" if channels == 1 else "RGB"), size)
        pixels = np.asarray(image, np.float32) / 127.5 - 1.0
    return pixels[..., None] if channels == 1 else pixels


def load_mask(path: str, size: int) -> np.ndarray:
    """An inpainting mask file as float32 [size, size, 1] of 0 / 1: white (>= half grey) marks
    what is regenerated, black what is kept (diffusers' convention, binarised as it does)."""
    with Image.open(path) as image:
        grey = np.asarray(_square(image.convert("L"), size), np.float32) / 255.0
    return (grey >= 0.5).astype(np.float32)[..., None]


def _square(image: Image.Image, size: int) -> Image.Image:
    """The centred square crop of `image`, resized to size x size (unchanged if it already is)."""
    width, height = image.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    return image if side == size else image.resize((size, size), Image.Resampling.LANCZOS)
