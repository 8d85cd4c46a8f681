"""The one entry point of the data side: a typed data config and per-process batch iterators."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from errors import ConfigError
from input_pipeline import captions, digits, tfds_source

# {"image": float32 [b, H, W, C] in [-1, 1], "label": int32 [b], "caption_id": int32 [b]}
Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Typed view of `config.data`."""

    name: str = "digits"
    data_dir: str = ""
    image_size: int = 8
    channels: int = 1
    random_flip: bool = False
    shuffle_buffer: int = 10_000
    tfds_name: str = ""  # data.name = "tfds": any tfds dataset, e.g. "coco_captions"
    image_key: str = "image"  # its image feature
    text_key: str = ""  # its text feature (batches then carry "text"); "" for none
    split: str = "train"
    device_prefetch: int = 2  # batches put on the devices ahead of their step (0: off)


# name -> (native image size, channels, number of classes, iterator factory)
DATASETS: dict[str, tuple[int, int, int, Callable[..., Iterator[Batch]]]] = {
    "digits": (digits.IMAGE_SIZE, 1, digits.NUM_CLASSES, digits.create_iterator),
    "cifar10": (32, 3, 10, tfds_source.create_cifar10_iterator),
    # Any tfds dataset: images are centre-cropped and resized to data.image_size; no labels.
    "tfds": (1, 0, 0, tfds_source.create_generic_iterator),
}


def data_config_from(data_cfg: Mapping[str, Any]) -> DataConfig:
    """Builds a DataConfig from `config.data`."""
    return DataConfig(**dict(data_cfg))


def validate_data_config(cfg: DataConfig) -> None:
    """Raises ConfigError naming the `data.*` field, its value and what is allowed."""
    if cfg.name not in DATASETS:
        raise ConfigError(f"data.name={cfg.name!r} is not known; allowed: {', '.join(DATASETS)}")
    native_size, channels, _, _ = DATASETS[cfg.name]
    if cfg.name == "tfds":
        _validate_generic(cfg)
    elif cfg.image_size < native_size or cfg.image_size % native_size:
        raise ConfigError(
            f"data.image_size={cfg.image_size} does not fit {cfg.name}: use {native_size} "
            f"or a multiple of it (images are enlarged by pixel repetition)."
        )
    elif cfg.channels != channels:
        raise ConfigError(f"data.channels={cfg.channels} but {cfg.name} has {channels} channel(s).")
    if cfg.shuffle_buffer < 1:
        raise ConfigError(f"data.shuffle_buffer={cfg.shuffle_buffer} must be >= 1.")
    if cfg.device_prefetch < 0:
        raise ConfigError(f"data.device_prefetch={cfg.device_prefetch} must be >= 0 (0: off).")


def _validate_generic(cfg: DataConfig) -> None:
    """The fields of `data.name = "tfds"`."""
    if not cfg.tfds_name:
        raise ConfigError('data.name="tfds" needs data.tfds_name (e.g. "coco_captions").')
    if cfg.image_size < 1:
        raise ConfigError(f"data.image_size={cfg.image_size} must be >= 1.")
    if cfg.channels not in (1, 3):
        raise ConfigError(f"data.channels={cfg.channels} must be 1 or 3.")
    if not cfg.image_key:
        raise ConfigError(f"data.image_key={cfg.image_key!r} must name the image feature.")


def num_classes(name: str) -> int:
    """Number of label classes of a dataset."""
    return DATASETS[name][2]


def require_data(cfg: DataConfig) -> None:
    """ConfigError now, not after compiling, when a tfds dataset is not prepared under
    `data.data_dir` (digits ship with scikit-learn and are always there)."""
    name = {"cifar10": "cifar10", "tfds": cfg.tfds_name}.get(cfg.name)
    if name is None:
        return
    try:
        tfds_source.require_available(name, cfg.data_dir)
    except tfds_source.DatasetNotFoundError as err:
        raise ConfigError(f"data.name={cfg.name!r}, data.data_dir={cfg.data_dir!r}: {err}") from err


def create_train_iterator(
    cfg: DataConfig,
    *,
    per_process_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    start_step: int = 0,
) -> Iterator[Batch]:
    """Endless iterator over this process's share of each global training batch."""
    validate_data_config(cfg)
    if per_process_batch_size < 1:
        raise ValueError(f"per-process batch size {per_process_batch_size} must be >= 1.")
    factory = DATASETS[cfg.name][3]
    batches = factory(
        cfg,
        per_process_batch_size=per_process_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        start_step=start_step,
    )
    if cfg.name not in captions.CAPTIONS:
        return batches
    return _with_captions(batches, cfg.name, seed, process_index, process_count, start_step)


def _with_captions(
    batches: Iterator[Batch],
    dataset: str,
    seed: int,
    process_index: int,
    process_count: int,
    start_step: int,
) -> Iterator[Batch]:
    """Adds `caption_id` (a row of `captions.caption_table(dataset)`) to each labelled batch."""
    for step, batch in zip(itertools.count(start_step), batches, strict=False):
        ids = captions.caption_ids(
            batch["label"],
            dataset,
            seed=seed,
            step=step,
            process_index=process_index,
            process_count=process_count,
        )
        yield {**batch, "caption_id": ids}
