"""A folder of image files (`data.name='folder'`): JPEG / PNG / WebP under `data.data_dir`, read
with Pillow, centre-cropped to a square and resized (Lanczos) to `data.image_size`.

The layouts of torchvision's ImageFolder and Hugging Face's `imagefolder` (what diffusers'
training scripts read)::

  data_dir/cat/001.jpg, data_dir/dog/a.png   class sub-folders: labels in sorted name order
  data_dir/001.jpg + data_dir/001.txt        a caption beside each image, or
  data_dir/metadata.jsonl                    lines {"file_name": "001.jpg", "text": "a cat"}

Labels: with `data.num_classes` > 0 each first-level sub-folder holding images is a class (sorted
names; images at any depth below it), and their count must equal num_classes; with 0 the images
of every depth are read, unlabelled. Captions: with `data.text_key` set, an image's caption is the
`text_key` value of its line in a metadata.jsonl (file_name relative to that file's folder), else
the text of the .txt of the same name beside it; an image with neither is an error.

Order: that of the digits (`digits.global_batch_indices`): global batch `step` is a slice of
per-epoch permutations of the files drawn from (seed, epoch), and each process takes its rows, so
batches are a pure function of (seed, step, process) and a resumed run reads what an
uninterrupted one would.

Decoding: when every image fits in `data.folder_cache_mb` (uint8 at data.image_size) all are
decoded once, on threads, when the iterator is made, and kept in memory; otherwise each batch
decodes its own files (threads). An unreadable file (not an image, truncated, ...) is skipped: its
place in the order goes to the next readable file in file order, with that file's label and
caption, so both ways give the same batches. Skips are counted in the log; more than
MAX_UNREADABLE_FRACTION of the folder is an UnreadableImagesError.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import os
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging
from PIL import Image, ImageOps

import paths
from errors import ConfigError
from input_pipeline import digits

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
METADATA = "metadata.jsonl"
MAX_UNREADABLE_FRACTION = 0.1  # more unreadable files than this share of the folder: an error
EXAMPLES = 5  # file names quoted in a message


class UnreadableImagesError(ValueError):
    """More than MAX_UNREADABLE_FRACTION of a folder's images cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """A folder's images in file order, with their labels and captions."""

    root: str  # absolute local path, or a remote one ("gs://bucket/images") as given
    files: tuple[str, ...]  # image paths relative to root, '/'-separated, sorted
    classes: tuple[str, ...]  # class sub-folder names in label order; () when unlabelled
    labels: np.ndarray | None  # int32 [N]; None when unlabelled
    # Per image: its metadata.jsonl caption, or None for the .txt beside it; None: no captions.
    captions: tuple[str | None, ...] | None

    def caption(self, index: int) -> str:
        """The caption of image `index` (its .txt read now, when it has no metadata line)."""
        text = self.captions[index]
        if text is not None:
            return text
        stem = posixpath.splitext(self.files[index])[0]
        return paths.as_path(f"{self.root}/{stem}.txt").read_text(encoding="utf-8").strip()


def _quote(names: Sequence[str]) -> str:
    """'a, b, c' or 'a, b, c, d, e, ... (12 in all)'."""
    shown = ", ".join(names[:EXAMPLES])
    return shown if len(names) <= EXAMPLES else f"{shown}, ... ({len(names)} in all)"


def scan_folder(data_dir: str, num_classes: int = 0, text_key: str = "") -> FolderIndex:
    """Lists the images under `data_dir` with their labels and caption sources (nothing decoded).

    Raises:
      ConfigError naming data.data_dir (missing, empty, no images, captions missing) or
      data.num_classes (not the number of class sub-folders).
    """
    root = paths.absolute(data_dir)
    where = f"data.data_dir={data_dir!r}"
    if not paths.as_path(root).is_dir():
        what = "is not a directory" if paths.as_path(root).exists() else "does not exist"
        raise ConfigError(f"{where} {what}; data.name='folder' reads its images from there.")
    files, texts, metadata = [], set(), []
    for folder, subfolders, names in paths.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        prefix = folder + "/" if folder else ""
        for name in names:
            lower = name.lower()
            if name.startswith("."):
                continue
            if lower.endswith(IMAGE_EXTENSIONS):
                files.append(prefix + name)
            elif lower.endswith(".txt"):
                texts.add(prefix + name)
            elif name == METADATA:
                metadata.append(prefix + name)
    if not files:
        what = "is empty" if not any(paths.as_path(root).iterdir()) else "holds no images"
        raise ConfigError(
            f"{where} {what}: data.name='folder' reads {', '.join(IMAGE_EXTENSIONS)} files "
            "(sub-folders included)."
        )
    files.sort()
    classes, labels = _labels(files, num_classes, where)
    captions = _captions(root, files, texts, metadata, text_key, where) if text_key else None
    return FolderIndex(root, tuple(files), classes, labels, captions)


def _labels(
    files: list[str], num_classes: int, where: str
) -> tuple[tuple[str, ...], np.ndarray | None]:
    """(class names, int32 label per file) from the first-level sub-folders; ((), None) for 0."""
    if num_classes == 0:
        return (), None
    loose = [file for file in files if "/" not in file]
    if loose:
        raise ConfigError(
            f"data.num_classes={num_classes} takes labels from class sub-folders, but {where} "
            f"has {len(loose)} image(s) at its top level ({_quote(loose)}); move them into a "
            "class folder, or set data.num_classes=0 (unlabelled)."
        )
    classes = tuple(sorted({file.split("/", 1)[0] for file in files}))
    if len(classes) != num_classes:
        raise ConfigError(
            f"data.num_classes={num_classes} but {where} has {len(classes)} class sub-folder(s) "
            f"with images ({_quote(classes)}); set data.num_classes={len(classes)}, or 0 "
            "(unlabelled)."
        )
    label_of = {name: label for label, name in enumerate(classes)}
    return classes, np.array([label_of[file.split("/", 1)[0]] for file in files], np.int32)


def _captions(
    root: str, files: list[str], texts: set[str], metadata: list[str], text_key: str, where: str
) -> tuple[str | None, ...]:
    """Per image: its caption from a metadata.jsonl, or None when a .txt beside it has one."""
    from_metadata: dict[str, str] = {}
    for meta in metadata:
        lines = paths.as_path(f"{root}/{meta}").read_text(encoding="utf-8").split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                name, text = entry["file_name"], entry[text_key]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ConfigError(
                    f"{where}: {meta} line {number} is not a JSON object with 'file_name' "
                    f"and data.text_key={text_key!r} ({type(err).__name__}: {err})."
                ) from err
            if isinstance(text, list):  # several captions: the first, as for tfds
                text = text[0] if text else None
            if text is not None:
                path = posixpath.normpath(posixpath.join(posixpath.dirname(meta), name))
                from_metadata[path] = str(text)
    captions: list[str | None] = []
    missing = []
    for file in files:
        if file in from_metadata:
            captions.append(from_metadata[file])
        elif posixpath.splitext(file)[0] + ".txt" in texts:
            captions.append(None)
        else:
            missing.append(file)
    if missing:
        raise ConfigError(
            f"{where}: {len(missing)} of {len(files)} images have no caption ({_quote(missing)}): "
            f"no line in a {METADATA} with data.text_key={text_key!r} and no .txt of the same "
            "name beside them. Add them, or set data.text_key='' (no captions)."
        )
    return tuple(captions)


def decode_image(path: str, image_size: int, channels: int) -> np.ndarray:
    """One file -> uint8 [S, S, C]: EXIF orientation applied, the centre square, Lanczos."""
    mode = "RGB" if channels == 3 else "L"
    with Image.open(paths.readable(path)) as image:
        image.draft(mode, (2 * image_size, 2 * image_size))  # JPEG: decode at >= 2x the size
        image = ImageOps.exif_transpose(image).convert(mode)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    # Cropped first: resize(box=...) would let the filter read pixels outside the square.
    image = image.crop((left, top, left + side, top + side))
    image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(image, np.uint8).reshape(image_size, image_size, channels)


class FolderImages:
    """Decoded images by file index; an unreadable file's place goes to the next readable one.

    Which file stands in for index i (the first readable from i on, in file order, wrapping
    round) depends only on the files, so cached and per-batch decoding give the same images.
    """

    def __init__(self, index: FolderIndex, image_size: int, channels: int, cache_bytes: int):
        self.index, self.image_size, self.channels = index, image_size, channels
        self.unreadable: dict[int, str] = {}  # file index -> why Pillow could not decode it
        self.stand_in: dict[int, int] = {}  # index of an unreadable file -> the file used instead
        self.pool = concurrent.futures.ThreadPoolExecutor(min(32, os.cpu_count() or 1))
        self.nbytes = len(index.files) * image_size * image_size * channels
        self.cache = None
        if self.nbytes <= cache_bytes:
            try:
                self.cache = self._decode_all()
            finally:
                self.pool.shutdown()  # every batch is a slice of the cache from now on

    def _read(self, i: int) -> np.ndarray | str:
        """File i decoded, or why it cannot be."""
        try:
            path = f"{self.index.root}/{self.index.files[i]}"
            return decode_image(path, self.image_size, self.channels)
        except Exception as err:  # Pillow: OSError, SyntaxError, struct.error, bombs, ...
            return f"{type(err).__name__}: {err}"

    def _limit_error(self) -> UnreadableImagesError:
        count, total = len(self.unreadable), len(self.index.files)
        shown = [f"{self.index.files[i]} ({why})" for i, why in sorted(self.unreadable.items())]
        return UnreadableImagesError(
            f"{count} of {total} images under {self.index.root} (data.data_dir) cannot be read, "
            f"more than {MAX_UNREADABLE_FRACTION:.0%}: {_quote(shown)}. Fix or remove them."
        )

    def _decode_all(self) -> np.ndarray:
        """Every image decoded once, uint8 [N, S, S, C]; unreadable ones hold their stand-in."""
        total = len(self.index.files)
        cache = np.empty((total, self.image_size, self.image_size, self.channels), np.uint8)
        for i, result in enumerate(self.pool.map(self._read, range(total))):
            if isinstance(result, str):
                self.unreadable[i] = result
            else:
                cache[i] = result
        if len(self.unreadable) > MAX_UNREADABLE_FRACTION * total:
            raise self._limit_error()
        if self.unreadable:
            logging.warning(
                "Skipped %d of %d images under %s that cannot be read (each one's place goes to "
                "the next readable file): %s",
                len(self.unreadable),
                total,
                self.index.root,
                _quote([f"{self.index.files[i]} ({why})" for i, why in self.unreadable.items()]),
            )
        readable = np.setdiff1d(np.arange(total), list(self.unreadable))
        for i in self.unreadable:
            self.stand_in[i] = int(readable[np.searchsorted(readable, i) % len(readable)])
            cache[i] = cache[self.stand_in[i]]
        return cache

    def _skip(self, i: int, why: str) -> int:
        """Counts file i as unreadable (an error past the limit); the next file to try."""
        total = len(self.index.files)
        if i not in self.unreadable:  # (twice in one batch when the batch is over an epoch)
            self.unreadable[i] = why
            logging.warning(
                "Skipped unreadable image %s (%s): %d of %d images so far; its place goes to "
                "the next readable file.",
                self.index.files[i],
                why,
                len(self.unreadable),
                total,
            )
            if len(self.unreadable) > MAX_UNREADABLE_FRACTION * total:
                raise self._limit_error()
        following = (i + 1) % total
        while following in self.unreadable:
            following = (following + 1) % total
        return following

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [b, S, S, C] images, int [b] index of the file each one came from)."""
        if self.cache is not None:
            sources = np.array([self.stand_in.get(int(i), int(i)) for i in indices], np.int64)
            return self.cache[indices], sources
        targets = [self.stand_in.get(int(i), int(i)) for i in indices]
        images = np.empty((len(targets), self.image_size, self.image_size, self.channels), np.uint8)
        sources = np.empty(len(targets), np.int64)
        for row, (i, target, result) in enumerate(
            zip(indices, targets, self.pool.map(self._read, targets), strict=True)
        ):
            while isinstance(result, str):  # decoded one by one: rare
                target = self._skip(target, result)
                result = self._read(target)
            if target != i:
                self.stand_in[int(i)] = target
            images[row], sources[row] = result, target
        return images, sources

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def create_iterator(
    cfg: Any,
    *,
    per_process_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches {image, label?, text?} from `start_step` on; `cfg` is a DataConfig.

    The folder is listed (and, when it fits data.folder_cache_mb, decoded) here, so a bad folder
    fails when the iterator is made, not at its first batch.
    """
    index = scan_folder(cfg.data_dir, cfg.num_classes, cfg.text_key)
    images = FolderImages(index, cfg.image_size, cfg.channels, cfg.folder_cache_mb * 2**20)
    logging.info(
        "Image folder %s: %d images, %s, %s; %s (%.1f MiB at %dpx).",
        index.root,
        len(index.files),
        f"classes {dict(enumerate(index.classes))}" if index.classes else "unlabelled",
        f"captions (data.text_key={cfg.text_key!r})" if index.captions else "no captions",
        "decoded once, kept in memory" if images.cache is not None else "decoded per batch",
        images.nbytes / 2**20,
        cfg.image_size,
    )
    return _batches(
        index,
        images,
        per_process_batch_size=per_process_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        start_step=start_step,
        random_flip=cfg.random_flip,
    )


def _batches(
    index: FolderIndex,
    images: FolderImages,
    *,
    per_process_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    start_step: int,
    random_flip: bool,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's slice of each global batch, as digits.make_batch slices and flips."""
    global_batch = per_process_batch_size * process_count
    rows = slice(
        process_index * per_process_batch_size, (process_index + 1) * per_process_batch_size
    )
    try:
        for step in itertools.count(start_step):
            mine = digits.global_batch_indices(len(index.files), global_batch, step, seed)[rows]
            pixels, sources = images.take(mine)
            image = pixels.astype(np.float32) / 127.5 - 1.0  # [b, S, S, C] in [-1, 1]
            if random_flip:  # drawn for the global batch, as for the digits
                flips = np.random.default_rng([seed, step, 1]).random(global_batch)[rows] < 0.5
                image = np.where(flips[:, None, None, None], image[:, :, ::-1], image)
            batch = {"image": np.ascontiguousarray(image)}
            if index.labels is not None:
                batch["label"] = index.labels[sources]
            if index.captions is not None:
                batch["text"] = np.array([index.caption(int(s)) for s in sources], dtype=object)
            yield batch
    finally:
        images.close()
