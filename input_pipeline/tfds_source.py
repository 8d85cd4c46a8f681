"""CIFAR-10 through tensorflow-datasets and tf.data: per-process shard, shuffle, flip, [-1, 1].

Resuming at step k reseeds the shuffle with (seed, k) instead of replaying k batches (replaying
would decode k * batch images): the stream stays a fresh random order, not the identical one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

EMBEDDED_CONFIG = "configs/digits_ddpm.py"


class DatasetNotFoundError(FileNotFoundError):
    """The prepared tfds dataset is not on disk (and we will not wait for a download)."""


def resolve_data_dir(data_dir: str) -> str:
    """`data.data_dir`, or tfds' default (TFDS_DATA_DIR or ~/tensorflow_datasets) when empty."""
    if data_dir:
        return os.path.abspath(os.path.expanduser(data_dir))
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def require_prepared(builder: Any, name: str, data_dir: str) -> None:
    """Fails fast, with the fix, when the dataset has not been downloaded and prepared."""
    import tensorflow as tf  # noqa: PLC0415

    if tf.io.gfile.exists(os.path.join(builder.data_path, "dataset_info.json")):
        return
    raise DatasetNotFoundError(
        f"The tfds dataset {name!r} is not prepared under data_dir={data_dir!r} (looked for "
        f"{builder.data_path}). Training does not download it: offline, tfds retries for minutes "
        f"before failing. To fetch it, on a machine with internet run:\n"
        f'  python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='{data_dir}').download_and_prepare()\"\n"
        f"(or `tfds build {name} --data_dir={data_dir}`) and copy the directory here, or set "
        f"--config.data.data_dir to where it lives. For a run that needs no download use the "
        f"embedded config: python main.py --config={EMBEDDED_CONFIG} --workdir=runs/digits_ddpm"
    )


def process_split(split: str, process_index: int, process_count: int) -> Any:
    """This process's equal, disjoint slice of a split (the remainder is dropped)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    return tfds.even_splits(split, n=process_count, drop_remainder=True)[process_index]


def _preprocess(random_flip: bool, seed: int):
    import tensorflow as tf  # noqa: PLC0415

    def preprocess(index, example):
        image = tf.cast(example["image"], tf.float32) / 127.5 - 1.0
        if random_flip:
            image = tf.image.stateless_random_flip_left_right(
                image, seed=tf.stack([tf.cast(seed, tf.int64), index])
            )
        return {"image": image, "label": tf.cast(example["label"], tf.int32)}

    return preprocess


def create_cifar10_iterator(
    cfg: Any,
    *,
    per_process_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless numpy batches of this process's share of the CIFAR-10 train split."""
    import tensorflow as tf  # noqa: PLC0415
    import tensorflow_datasets as tfds  # noqa: PLC0415

    tf.config.set_visible_devices([], "GPU")  # tf.data must not grab accelerator memory
    data_dir = resolve_data_dir(cfg.data_dir)
    builder = tfds.builder("cifar10", data_dir=data_dir)
    require_prepared(builder, "cifar10", data_dir)
    split = process_split("train", process_index, process_count)
    run_seed = int(np.random.default_rng([seed, start_step, process_index]).integers(2**31))
    read_config = tfds.ReadConfig(shuffle_seed=run_seed)
    ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config)
    ds = ds.repeat().shuffle(cfg.shuffle_buffer, seed=run_seed).enumerate()
    ds = ds.map(_preprocess(cfg.random_flip, run_seed), num_parallel_calls=tf.data.AUTOTUNE)
    if cfg.image_size != 32:
        scale = cfg.image_size // 32
        ds = ds.map(
            lambda ex: {**ex, "image": tf.repeat(tf.repeat(ex["image"], scale, 0), scale, 1)}
        )
    ds = ds.batch(per_process_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds))
