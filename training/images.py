"""Sample grids: [-1, 1] image batches to one uint8 picture, written as PNG."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import paths

CELL_PIXELS = 64  # about how many pixels a grid cell spans in PNG files and TensorBoard
LABEL_WIDTH = 160  # the widest a row label's text runs before it wraps
LABEL_MARGIN = 4  # pixels either side of the labels


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Maps [-1, 1] floats to [0, 255] uint8 (values outside are clipped)."""
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def grid_upscale(cell_side: int, target: int = CELL_PIXELS) -> int:
    """The whole nearest-neighbour factor that brings a cell `cell_side` pixels wide to about
    `target` (8x8 digits: 8; 28: 2; 32: 2; 64 and up: 1)."""
    return max(1, target // cell_side)


def make_grid(
    images: np.ndarray, num_rows: int | None = None, padding: int = 1, upscale: int = 1
) -> np.ndarray:
    """Tiles [N, H, W, C] images, each enlarged `upscale` times by repeating its pixels
    (nearest-neighbour), into one [rows*(uH+p)+p, cols*(uW+p)+p, C] uint8 grid."""
    count = images.shape[0]
    pixels = to_uint8(images)
    if upscale > 1:
        pixels = pixels.repeat(upscale, axis=1).repeat(upscale, axis=2)
    _, height, width, channels = pixels.shape
    rows = num_rows or int(math.ceil(math.sqrt(count)))
    cols = int(math.ceil(count / rows))
    grid = np.zeros(
        (rows * (height + padding) + padding, cols * (width + padding) + padding, channels),
        np.uint8,
    )
    for index in range(count):
        row, col = divmod(index, cols)
        top = padding + row * (height + padding)
        left = padding + col * (width + padding)
        grid[top : top + height, left : left + width] = pixels[index]
    return grid


def sample_grid(
    images: np.ndarray, num_rows: int | None = None, labels: Sequence[str] | None = None
) -> np.ndarray:
    """The picture of a sample batch as PNG files and TensorBoard show it: cells enlarged to
    about CELL_PIXELS (`grid_upscale`), and with `labels` (one per row: its prompt or class)
    written left of their rows. The cells' pixels are the same with or without labels."""
    upscale = grid_upscale(max(images.shape[1:3]))
    grid = make_grid(images, num_rows, upscale=upscale)
    if not labels:
        return grid
    return label_rows(grid, labels, row_height=images.shape[1] * upscale)


def label_rows(
    grid: np.ndarray, labels: Sequence[str], row_height: int, padding: int = 1
) -> np.ndarray:
    """`grid` (rows `row_height` pixels tall, `padding` apart) widened on the left by a black
    column holding label i in white beside row i, in PIL's default font; a label wraps at
    LABEL_WIDTH pixels, and one too long for its row is cut short with '...'."""
    rows = (grid.shape[0] - padding) // (row_height + padding)
    if len(labels) != rows:
        raise ValueError(f"{len(labels)} labels for a grid of {rows} rows.")
    font = ImageFont.load_default()
    left, top, _, bottom = font.getbbox("Ag")
    line_height = bottom - top + 2
    measure = ImageDraw.Draw(Image.new("L", (1, 1))).textlength
    blocks = [
        _wrap(str(label), lambda text: measure(text, font), max(1, row_height // line_height))
        for label in labels
    ]
    text_width = max((measure(line, font) for block in blocks for line in block), default=0)
    column = Image.new("L", (int(math.ceil(text_width)) + 2 * LABEL_MARGIN, grid.shape[0]))
    draw = ImageDraw.Draw(column)
    for row, block in enumerate(blocks):
        row_top = padding + row * (row_height + padding)
        y = row_top + (row_height - len(block) * line_height) // 2 - top
        for line in block:
            draw.text((LABEL_MARGIN - left, y), line, fill=255, font=font)
            y += line_height
    pixels = np.asarray(column)[..., None].repeat(grid.shape[-1], axis=-1)
    return np.concatenate([pixels, grid], axis=1)


def _wrap(text: str, width_of, max_lines: int) -> list[str]:
    """`text` broken at spaces into at most `max_lines` lines of at most LABEL_WIDTH pixels
    (`width_of(line)`); what does not fit is cut, and the cut marked with '...'."""
    lines: list[str] = []
    for word in text.split():
        if lines and width_of(f"{lines[-1]} {word}") <= LABEL_WIDTH:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    cut = len(lines) > max_lines
    lines = lines[:max_lines]
    fitted = []
    for index, line in enumerate(lines):
        short = cut and index == len(lines) - 1
        while line and width_of(line + ("..." if short else "")) > LABEL_WIDTH:
            line, short = line[:-1], True
        fitted.append(line + ("..." if short else ""))
    return fitted


def save_png(grid: np.ndarray, path: str) -> None:
    """Writes a uint8 [H, W, C] picture as PNG (grey for one channel), locally or remotely."""
    encoded = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(encoded, format="PNG")
    paths.write_bytes(path, encoded.getvalue())


def load_image(path: str, size: int, channels: int) -> np.ndarray:
    """An image file as float32 [size, size, channels] in [-1, 1]: centre-cropped to a square,
    resized with Lanczos (as diffusers' image processor), grey or RGB."""
    with Image.open(paths.readable(path)) as image:
        image = _square(image.convert("L" if channels == 1 else "RGB"), size)
        pixels = np.asarray(image, np.float32) / 127.5 - 1.0
    return pixels[..., None] if channels == 1 else pixels


def load_mask(path: str, size: int) -> np.ndarray:
    """An inpainting mask file as float32 [size, size, 1] of 0 / 1: white (>= half grey) marks
    what is regenerated, black what is kept (diffusers' convention, binarised as it does)."""
    with Image.open(paths.readable(path)) as image:
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
