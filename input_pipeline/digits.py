"""scikit-learn's 8x8 handwritten digits (1797 images, shipped with the package, no download).

Every batch is a pure function of (seed, step, process): a run resumed at step k sees exactly the
batches an uninterrupted run would have seen from step k on, and the processes' slices of a step
concatenate to the same global batch whatever the process count.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

IMAGE_SIZE = 8
NUM_CLASSES = 10
# "train": all 1797 images (what diffusion runs train on); "fit" / "held_out": a fixed stratified
# 80 / 20 split (the digits feature network trains on "fit"; autoencoders report on "held_out").
SPLITS = ("train", "fit", "held_out")
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits_images(
    image_size: int = IMAGE_SIZE, channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images as float32 [N, S, S, C] in [-1, 1] (values 0..16 scaled; C = 3 repeats
    the grey value, for RGB models such as Stable Diffusion's VAE) and int32 labels."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 (slow import, only when used)

    data = load_digits()
    images = (data.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    if channels > 1:
        images = images.repeat(channels, axis=-1)
    scale = image_size // IMAGE_SIZE
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    return images, data.target.astype(np.int32)


def split_indices(split: str) -> np.ndarray:
    """Indices into load_digits_images() of one of SPLITS (sorted for "train")."""
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    if split not in SPLITS:
        raise ValueError(f"digits split must be one of {SPLITS}, got {split!r}.")
    _, labels = load_digits_images()
    everything = np.arange(len(labels))
    if split == "train":
        return everything
    fit, held_out = train_test_split(
        everything,
        test_size=HELD_OUT_FRACTION,
        random_state=SPLIT_SEED,
        stratify=labels,
    )
    return fit if split == "fit" else held_out


def global_batch_indices(num_examples: int, global_batch: int, step: int, seed: int) -> np.ndarray:
    """Example indices of global batch `step`: consecutive slices of per-epoch permutations."""
    start = step * global_batch
    positions = np.arange(start, start + global_batch)
    epochs, offsets = np.divmod(positions, num_examples)
    indices = np.empty(global_batch, np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
        chosen = epochs == epoch
        indices[chosen] = order[offsets[chosen]]
    return indices


def make_batch(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    step: int,
    seed: int,
    per_process_batch_size: int,
    process_index: int,
    process_count: int,
    random_flip: bool,
) -> dict[str, np.ndarray]:
    """This process's slice of global batch `step`."""
    global_batch = per_process_batch_size * process_count
    indices = global_batch_indices(len(images), global_batch, step, seed)
    rows = slice(
        process_index * per_process_batch_size, (process_index + 1) * per_process_batch_size
    )
    mine = indices[rows]
    batch_images = images[mine]
    if random_flip:  # drawn for the global batch, so it does not depend on the process count
        flips = np.random.default_rng([seed, step, 1]).random(global_batch)[rows] < 0.5
        batch_images = np.where(flips[:, None, None, None], batch_images[:, :, ::-1], batch_images)
    return {"image": np.ascontiguousarray(batch_images), "label": labels[mine]}


def create_iterator(
    cfg: Any,
    *,
    per_process_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches from `start_step` on; `cfg` is an input_pipeline DataConfig."""
    images, labels = load_digits_images(cfg.image_size, cfg.channels)
    chosen = split_indices(cfg.split)
    images, labels = images[chosen], labels[chosen]
    for step in itertools.count(start_step):
        yield make_batch(
            images,
            labels,
            step=step,
            seed=seed,
            per_process_batch_size=per_process_batch_size,
            process_index=process_index,
            process_count=process_count,
            random_flip=cfg.random_flip,
        )
