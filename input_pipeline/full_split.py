"""Every image of a data split exactly once, in a fixed order: what reference statistics cover.

Unlike the training iterators there is no shuffling, no flipping and no repetition. Images come
as float32 in [0, 1] holding 8-bit values (what a PNG holds, as evaluation sees samples), at the
run's `data.image_size`, each process taking its own share.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from input_pipeline import digits, folder, tfds_source


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """[-1, 1] images -> 8-bit values scaled to [0, 1] (round to the nearest level)."""
    levels = np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5)
    return levels.astype(np.float32) / 255.0


def split_size(cfg: Any, split: str) -> int:
    """Number of images in `split` of the config's data set (before sharding over processes)."""
    if cfg.name == "digits":
        return len(digits.split_indices(split))
    if cfg.name == "folder":  # the whole folder is the split
        return len(folder.scan_folder(cfg.data_dir).files)
    builder = _builder(cfg)
    return int(builder.info.splits[split].num_examples)


def iterate_split(
    cfg: Any, split: str, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[np.ndarray]:
    """Batches [b, S, S, C] float32 in [0, 1] of this process's share of `split`, in order."""
    if cfg.name == "digits":
        images, _ = digits.load_digits_images(cfg.image_size, cfg.channels)
        images = images[digits.split_indices(split)]
        share = np.array_split(np.arange(len(images)), process_count)[process_index]
        for start in range(0, len(share), batch_size):
            yield to_unit_range(images[share[start : start + batch_size]])
        return
    if cfg.name == "folder":
        yield from _folder_batches(cfg, batch_size, process_index, process_count)
        return
    yield from _tfds_batches(cfg, split, batch_size, process_index, process_count)


def _folder_batches(cfg: Any, batch_size: int, process_index: int, process_count: int):
    """The folder's readable images in file order (unreadable ones are left out)."""
    index = folder.scan_folder(cfg.data_dir)
    share = np.array_split(np.arange(len(index.files)), process_count)[process_index]
    batch = []
    for i in share:
        try:
            path = f"{index.root}/{index.files[i]}"
            batch.append(folder.decode_image(path, cfg.image_size, cfg.channels))
        except Exception:  # noqa: BLE001 (Pillow raises many kinds on broken files)
            continue
        if len(batch) == batch_size:
            yield np.stack(batch).astype(np.float32) / 255.0
            batch = []
    if batch:
        yield np.stack(batch).astype(np.float32) / 255.0


def _tfds_batches(cfg: Any, split: str, batch_size: int, process_index: int, process_count: int):
    import tensorflow as tf  # noqa: PLC0415
    import tensorflow_datasets as tfds  # noqa: PLC0415

    tf.config.set_visible_devices([], "GPU")
    builder = _builder(cfg)
    split = tfds_source.process_split(split, process_index, process_count)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if cfg.name == "tfds":
        preprocess = tfds_source.generic_preprocess(cfg)  # the training crop, resize
        ds = ds.map(lambda ex: {"image": preprocess(ex)["image"]})
    else:
        ds = ds.map(lambda ex: {"image": tf.cast(ex["image"], tf.float32) / 127.5 - 1.0})
    for batch in tfds.as_numpy(ds.batch(batch_size)):
        images = batch["image"]
        if images.shape[1] != cfg.image_size:  # CIFAR at 2x: the pixels repeated, as in training
            scale = cfg.image_size // images.shape[1]
            images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        yield to_unit_range(images)


def _builder(cfg: Any):
    import tensorflow_datasets as tfds  # noqa: PLC0415

    name = cfg.tfds_name if cfg.name == "tfds" else cfg.name
    data_dir = tfds_source.resolve_data_dir(cfg.data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    tfds_source.require_prepared(builder, name, data_dir)
    return builder
