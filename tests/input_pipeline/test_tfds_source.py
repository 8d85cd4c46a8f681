import itertools
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import tfds_source
from input_pipeline.pipeline import DataConfig, create_train_iterator


def test_missing_dataset_fails_fast_with_the_fix(tmp_path):
    cfg = DataConfig(name="cifar10", data_dir=str(tmp_path), image_size=32, channels=3)
    start = time.perf_counter()
    with pytest.raises(tfds_source.DatasetNotFoundError) as error:
        next(
            create_train_iterator(
                cfg, per_process_batch_size=4, seed=0, process_index=0, process_count=1
            )
        )
    elapsed = time.perf_counter() - start
    assert elapsed < 30, elapsed
    message = str(error.value)
    assert str(tmp_path) in message
    assert "download_and_prepare" in message and "configs/digits_ddpm.py" in message


def _first(cfg, **kw):
    it = create_train_iterator(cfg, per_process_batch_size=8, seed=0, **kw)
    return list(itertools.islice(it, 2))


def test_cifar_batches_are_scaled_nhwc(prepared_cifar):
    data_dir, _ = prepared_cifar
    cfg = DataConfig(
        name="cifar10",
        data_dir=data_dir,
        image_size=32,
        channels=3,
        random_flip=False,
        shuffle_buffer=16,
    )
    batches = _first(cfg, process_index=0, process_count=1)
    image = batches[0]["image"]
    assert image.shape == (8, 32, 32, 3) and image.dtype == np.float32
    assert image.min() >= -1.0 and image.max() <= 1.0 and image.std() > 0.1
    assert batches[0]["label"].dtype == np.int32 and batches[0]["label"].shape == (8,)


def test_flip_mirrors_images_of_the_same_stream(prepared_cifar):
    data_dir, _ = prepared_cifar
    base = DataConfig(
        name="cifar10",
        data_dir=data_dir,
        image_size=32,
        channels=3,
        random_flip=False,
        shuffle_buffer=1,
    )
    plain = _first(base, process_index=0, process_count=1)[0]["image"]
    flipped = _first(
        DataConfig(**{**base.__dict__, "random_flip": True}), process_index=0, process_count=1
    )[0]["image"]
    mirrored = sum(
        np.allclose(f, p[:, ::-1]) and not np.allclose(f, p)
        for f, p in zip(flipped, plain, strict=True)
    )
    same = sum(np.allclose(f, p) for f, p in zip(flipped, plain, strict=True))
    assert mirrored >= 1 and mirrored + same == 8


def test_processes_read_disjoint_slices_of_the_split():
    splits = [tfds_source.process_split("train", i, 4) for i in range(4)]
    assert [(s.split, s.index, s.count, s.drop_remainder) for s in splits] == [
        ("train", i, 4, True) for i in range(4)
    ]


def _write_raw_cifar(root, per_file=4):
    """Tiny CIFAR-10 binary files (label byte + CHW uint8 image); returns the train images."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, (per_file, 1), dtype=np.uint8)
        chw = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)
        np.concatenate([labels, chw.reshape(per_file, -1)], 1).tofile(folder / name)
        if name != "test_batch.bin":
            train.extend(chw.transpose(0, 2, 3, 1))
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    return train


@pytest.fixture(scope="module")
def prepared_cifar(tmp_path_factory):
    """A real (tiny, 20 train images) prepared tfds cifar10 on disk, built offline."""
    root = tmp_path_factory.mktemp("cifar")
    train = _write_raw_cifar(root / "raw")
    data_dir = str(root / "tfds")
    builder = tfds.builder("cifar10", data_dir=data_dir)
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    dl = mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", return_value=str(root / "raw")
    )
    with dl:
        builder.download_and_prepare(download_config=config)
    return data_dir, {image.tobytes() for image in train}


def _stream(data_dir, count, size=32, **kw):
    cfg = DataConfig(
        name="cifar10", data_dir=data_dir, image_size=size, channels=3, shuffle_buffer=16
    )
    it = create_train_iterator(cfg, per_process_batch_size=5, seed=0, **kw)
    return [b["image"] for b in itertools.islice(it, count)]


def _as_uint8(images):
    return {np.rint((x + 1.0) * 127.5).astype(np.uint8).tobytes() for x in np.concatenate(images)}


def test_processes_read_disjoint_shards_that_cover_the_split(prepared_cifar):
    data_dir, train = prepared_cifar
    seen = [_as_uint8(_stream(data_dir, 6, process_index=i, process_count=2)) for i in range(2)]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == train


def test_resuming_at_a_step_reads_exactly_what_the_uninterrupted_run_reads(prepared_cifar):
    data_dir, train = prepared_cifar

    def stream(start_step, count):
        kw = dict(process_index=0, process_count=1, start_step=start_step)
        return np.stack(_stream(data_dir, count, **kw))

    uninterrupted = stream(0, 12)  # 60 examples: several epochs of the small split
    for start in (1, 5, 9):  # inside the first epoch, at later epochs, mid-epoch
        np.testing.assert_array_equal(stream(start, 12 - start), uninterrupted[start:])
    # each epoch holds every example once, in a new order
    per_epoch = len(train)
    flat = uninterrupted.reshape(-1, *uninterrupted.shape[2:])
    first, second = flat[:per_epoch], flat[per_epoch : 2 * per_epoch]
    assert _as_uint8([first]) == _as_uint8([second]) == train
    assert not np.array_equal(first, second)


def test_larger_image_sizes_repeat_pixels(prepared_cifar):
    data_dir, _ = prepared_cifar
    (big,) = _stream(data_dir, 1, size=64, process_index=0, process_count=1)
    (small,) = _stream(data_dir, 1, process_index=0, process_count=1)
    assert big.shape == (5, 64, 64, 3)
    np.testing.assert_array_equal(big[:, ::2, ::2], small)
