"""tfds datasets through tf.data (CIFAR-10, or any with an image and a text feature): per-process
shard, shuffle, flip, [-1, 1].

The example order is a pure function of (seed, process, epoch), so a run resumed at step k reads
exactly the batches an uninterrupted run reads from step k on (see `epoch_stream`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

import paths

EMBEDDED_CONFIG = "configs/digits_ddpm.py"


class DatasetNotFoundError(FileNotFoundError):
    """The prepared tfds dataset is not on disk (and we will not wait for a download)."""


def resolve_data_dir(data_dir: str) -> str:
    """`data.data_dir` (made absolute when local; "gs://..." as given), or tfds' default
    (TFDS_DATA_DIR or ~/tensorflow_datasets) when empty."""
    if data_dir:
        return paths.absolute(data_dir)
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def require_prepared(builder: Any, name: str, data_dir: str) -> None:
    """Fails fast, with the fix, when the dataset has not been downloaded and prepared."""
    if (paths.as_path(builder.data_path) / "dataset_info.json").exists():
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


def require_available(name: str, data_dir: str) -> None:
    """Fails fast, before any training work, when tfds dataset `name` is not prepared on disk."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    resolved = resolve_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=resolved)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DatasetNotFoundError(f"tfds has no dataset named {name!r}: {err}") from err
    require_prepared(builder, name, resolved)


def process_split(split: str, process_index: int, process_count: int) -> Any:
    """This process's equal, disjoint slice of a split (the remainder is dropped)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    return tfds.even_splits(split, n=process_count, drop_remainder=True)[process_index]


def process_seed(seed: int, process_index: int) -> int:
    """This process's shuffle and flip seed: fixed for the run, so resumes replay its order."""
    return int(np.random.default_rng([seed, process_index]).integers(2**31))


def epoch_stream(builder: Any, split: Any, *, shuffle_buffer: int, seed: int, start_example: int):
    """(global example index, example) pairs from `start_example` on, endlessly.

    Epoch e is the split (files in a fixed order) shuffled through a `shuffle_buffer` window with
    a seed made from (seed, e), so the order depends on nothing but those. Resuming at example n
    starts at epoch n // N and skips n % N examples: at most one epoch is read to get there.
    """
    import tensorflow as tf  # noqa: PLC0415

    examples_per_epoch = builder.info.splits[split].num_examples
    start_epoch, offset = divmod(start_example, examples_per_epoch)
    base = builder.as_dataset(split=split, shuffle_files=False)

    def epoch(index):
        epoch_seed = tf.constant(seed, tf.int64) * 1_000_003 + index
        return base.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)

    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch)
    return ds.skip(offset).enumerate(start=start_example)


def process_stream(
    builder: Any,
    split: str,
    shuffle_buffer: int,
    seed: int,
    process_index: int,
    process_count: int,
    *,
    start_example: int,
) -> tuple[Any, int]:
    """This process's `epoch_stream` of `split` and its run seed (for per-example randomness)."""
    run_seed = process_seed(seed, process_index)
    own_split = process_split(split, process_index, process_count)
    stream = epoch_stream(
        builder,
        own_split,
        shuffle_buffer=shuffle_buffer,
        seed=run_seed,
        start_example=start_example,
    )
    return stream, run_seed


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
    ds, run_seed = process_stream(
        builder,
        "train",
        cfg.shuffle_buffer,
        seed,
        process_index,
        process_count,
        start_example=start_step * per_process_batch_size,
    )
    ds = ds.map(_preprocess(cfg.random_flip, run_seed), num_parallel_calls=tf.data.AUTOTUNE)
    if cfg.image_size != 32:
        scale = cfg.image_size // 32
        ds = ds.map(
            lambda ex: {**ex, "image": tf.repeat(tf.repeat(ex["image"], scale, 0), scale, 1)}
        )
    ds = ds.batch(per_process_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds))


def generic_preprocess(cfg: Any):
    """Image feature -> square crop, resize, channel count, [-1, 1]; text feature -> bytes."""
    import tensorflow as tf  # noqa: PLC0415

    def preprocess(example):
        image = example[cfg.image_key]
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(
            image, (height - side) // 2, (width - side) // 2, side, side
        )
        image = tf.image.resize(image, (cfg.image_size, cfg.image_size), antialias=True)
        if image.shape[-1] == 1 and cfg.channels == 3:
            image = tf.image.grayscale_to_rgb(image)
        elif image.shape[-1] == 3 and cfg.channels == 1:
            image = tf.image.rgb_to_grayscale(image)
        out = {"image": tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)}
        if cfg.label_key:
            out["label"] = tf.cast(example[cfg.label_key], tf.int32)
        if cfg.text_key:
            text = example
            for part in cfg.text_key.split("/"):  # nested features: "captions/text"
                text = text[part]
            out["text"] = text if text.shape.rank == 0 else text[0]  # first of several captions
        return out

    return preprocess


def check_labels(feature: Any, cfg: Any) -> None:
    """ValueError unless `feature` is a ClassLabel of exactly `data.num_classes` classes."""
    found = getattr(feature, "num_classes", None)
    if found is None:
        raise ValueError(
            f"data.label_key={cfg.label_key!r} is a {type(feature).__name__} feature of "
            f"{cfg.tfds_name}; class conditioning needs a ClassLabel."
        )
    if found != cfg.num_classes:
        raise ValueError(
            f"data.num_classes={cfg.num_classes} but {cfg.tfds_name}'s {cfg.label_key!r} has "
            f"{found} classes; set data.num_classes={found}."
        )


def create_generic_iterator(
    cfg: Any,
    *,
    per_process_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches {image, label?, text?} of this process's share of `data.tfds_name`'s
    split."""
    import tensorflow as tf  # noqa: PLC0415
    import tensorflow_datasets as tfds  # noqa: PLC0415

    tf.config.set_visible_devices([], "GPU")
    data_dir = resolve_data_dir(cfg.data_dir)
    builder = tfds.builder(cfg.tfds_name, data_dir=data_dir)
    require_prepared(builder, cfg.tfds_name, data_dir)
    features = builder.info.features
    keys = (("image_key", cfg.image_key), ("text_key", cfg.text_key), ("label_key", cfg.label_key))
    for field, key in keys:
        if key and key.split("/")[0] not in features:
            raise ValueError(
                f"data.{field}={key!r} is not a feature of {cfg.tfds_name}; it has: "
                f"{', '.join(features.keys())}"
            )
    if cfg.label_key:
        check_labels(features[cfg.label_key], cfg)
    ds, _ = process_stream(
        builder,
        cfg.split,
        cfg.shuffle_buffer,
        seed,
        process_index,
        process_count,
        start_example=start_step * per_process_batch_size,
    )
    ds = ds.map(lambda index, example: example)
    ds = ds.map(generic_preprocess(cfg), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(per_process_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    for batch in tfds.as_numpy(ds):
        if "text" in batch:
            batch["text"] = np.array([t.decode("utf-8") for t in batch["text"]], dtype=object)
        yield batch
