"""The one entry point of the data side: a typed data config and per-process batch iterators."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator

import numpy as np

from errors import ConfigError
from input_pipeline import captions, digits, folder, tfds_source
from schema import field, one_of, require

# {"image": float32 [b, H, W, C] in [-1, 1], "label": int32 [b], "caption_id": int32 [b]}, or
# free-text "text": object [b] of str (tfds with data.text_key, folders with captions)
Batch = dict[str, np.ndarray]


# name -> (native image size, channels, number of classes, iterator factory)
DATASETS: dict[str, tuple[int, int, int, Callable[..., Iterator[Batch]]]] = {
    "digits": (digits.IMAGE_SIZE, 1, digits.NUM_CLASSES, digits.create_iterator),
    "cifar10": (32, 3, 10, tfds_source.create_cifar10_iterator),
    # Any tfds dataset: images are centre-cropped and resized to data.image_size; labels when
    # data.label_key names a ClassLabel feature (data.num_classes classes).
    "tfds": (1, 0, 0, tfds_source.create_generic_iterator),
    # Image files under data.data_dir (input_pipeline/folder.py): cropped and resized the same
    # way; labels from class sub-folders (data.num_classes), captions with data.text_key.
    "folder": (1, 0, 0, folder.create_iterator),
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`config.data`: which images, at what size, and how they reach the devices."""

    name: str = field(
        "digits",
        "'digits' (embedded), 'cifar10' (tfds), 'tfds' (any, below) or 'folder' (image files "
        "under data.data_dir).",
    )
    data_dir: str = field(
        "",
        "tfds data_dir ('' means tfds' default, ~/tensorflow_datasets); for data.name='folder' "
        "the folder of JPEG / PNG / WebP files (input_pipeline/folder.py).",
    )
    image_size: int = field(8, "Height = width of the images fed to the model.")
    channels: int = field(1, "Image channels (1 for digits, or 3 as grey RGB; 3 for CIFAR-10).")
    random_flip: bool = field(False, "Random horizontal flips (CIFAR-10 yes; digits no).")
    shuffle_buffer: int = field(10_000, "tf.data shuffle buffer (tfds sources only).")
    tfds_name: str = field(
        "", "data.name='tfds': any tfds dataset with an image feature, e.g. 'coco_captions'."
    )
    image_key: str = field("image", "Its image feature (centre-cropped and resized).")
    text_key: str = field(
        "",
        "Its text feature, embedded batch by batch; '/' reaches into nested features. For "
        "data.name='folder' the metadata.jsonl key of the captions (e.g. 'text'); images without "
        "a line there read the .txt of the same name beside them.",
    )
    label_key: str = field(
        "", "Its integer class-label feature, e.g. 'label' for imagenet2012 ('' = unlabelled)."
    )
    num_classes: int = field(
        0,
        "With label_key: the number of classes (checked against the dataset's ClassLabel); for "
        "data.name='folder' the number of class sub-folders (0: unlabelled).",
    )
    folder_cache_mb: int = field(
        2048,
        "data.name='folder': decode every image once and keep them in memory (uint8 at "
        "data.image_size) when they take at most this many MiB; else decode each batch's files.",
    )
    split: str = field(
        "train",
        "The split to train on: a tfds split, or for digits 'train' (all 1797), 'fit' (a fixed "
        "80%) or 'held_out' (the other 20%).",
    )
    device_prefetch: int = field(
        2, "Batches copied to the devices ahead of the step that uses them (0 = off)."
    )

    def validate(self) -> None:
        """Raises ConfigError naming the `data.*` field, its value and what is allowed."""
        one_of("data.name", self.name, DATASETS)
        native_size, channels, _, _ = DATASETS[self.name]
        if self.name in ("tfds", "folder"):
            require(self.image_size >= 1, "data.image_size", self.image_size, "must be >= 1.")
            one_of("data.channels", self.channels, (1, 3))
        if self.name == "folder":
            self._validate_folder()
        elif self.name == "tfds":
            self._validate_tfds()
        else:
            for name in ("label_key", "num_classes"):
                require(
                    not getattr(self, name),
                    f"data.{name}",
                    getattr(self, name),
                    f"is for data.name='tfds'; {self.name} has its own labels.",
                )
            require(
                self.image_size >= native_size and self.image_size % native_size == 0,
                "data.image_size",
                self.image_size,
                f"does not fit {self.name}: use {native_size} or a multiple of it (images are "
                "enlarged by pixel repetition).",
            )
            grey_to_rgb = self.name == "digits" and self.channels == 3
            require(
                self.channels == channels or grey_to_rgb,
                "data.channels",
                self.channels,
                f"does not match {self.name}, which has {channels} channel(s)"
                + (
                    " (or 3: the grey value repeated, for RGB models)."
                    if self.name == "digits"
                    else "."
                ),
            )
        if self.name == "digits":
            one_of("data.split", self.split, digits.SPLITS)
        require(
            self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, "must be >= 1."
        )
        require(
            self.device_prefetch >= 0,
            "data.device_prefetch",
            self.device_prefetch,
            "must be >= 0 (0: off).",
        )
        require(
            self.folder_cache_mb >= 0, "data.folder_cache_mb", self.folder_cache_mb, "must be >= 0."
        )

    def _validate_tfds(self) -> None:
        """data.name='tfds': a dataset, its image feature, labels only with a label_key."""
        require(
            bool(self.tfds_name),
            "data.tfds_name",
            self.tfds_name,
            "is empty; data.name='tfds' needs a tfds dataset name (e.g. 'coco_captions').",
        )
        require(
            bool(self.image_key),
            "data.image_key",
            self.image_key,
            "must name the image feature.",
        )
        if self.label_key:
            require(
                self.num_classes >= 2,
                "data.num_classes",
                self.num_classes,
                f"must be >= 2 with data.label_key={self.label_key!r} (the dataset's classes).",
            )
        else:
            require(
                self.num_classes == 0,
                "data.num_classes",
                self.num_classes,
                "is for labelled tfds data: set data.label_key too, or leave it 0.",
            )

    def _validate_folder(self) -> None:
        """data.name='folder': a folder named; labels from its sub-folders, not a label_key."""
        require(
            bool(self.data_dir),
            "data.data_dir",
            self.data_dir,
            "is empty; data.name='folder' reads the image files under it.",
        )
        require(
            not self.label_key,
            "data.label_key",
            self.label_key,
            "is for data.name='tfds'; a folder's labels are its class sub-folders (set "
            "data.num_classes to their count).",
        )
        require(
            self.num_classes >= 0,
            "data.num_classes",
            self.num_classes,
            "must be >= 0 (the number of class sub-folders; 0: unlabelled).",
        )


def num_classes(cfg: DataConfig) -> int:
    """Number of label classes of the configured data (0: unlabelled)."""
    if cfg.name == "folder":
        return cfg.num_classes
    if cfg.name == "tfds":
        return cfg.num_classes if cfg.label_key else 0
    return DATASETS[cfg.name][2]


def require_data(cfg: DataConfig) -> None:
    """ConfigError now, not after compiling, when a tfds dataset is not prepared under
    `data.data_dir`, or an image folder is missing, holds no images, lacks captions or has not
    data.num_classes class sub-folders (digits ship with scikit-learn and are always there)."""
    if cfg.name == "folder":
        folder.scan_folder(cfg.data_dir, cfg.num_classes, cfg.text_key)  # lists, decodes nothing
        return
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
    cfg.validate()
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
