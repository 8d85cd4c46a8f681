import itertools
import time

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


@pytest.fixture
def mock_cifar(monkeypatch):
    monkeypatch.setattr(tfds_source, "require_prepared", lambda *args: None)
    with tfds.testing.mock_data(num_examples=64):
        yield


def _first(cfg, **kw):
    it = create_train_iterator(cfg, per_process_batch_size=8, seed=0, **kw)
    return list(itertools.islice(it, 2))


def test_cifar_batches_are_scaled_nhwc(mock_cifar):
    cfg = DataConfig(
        name="cifar10", image_size=32, channels=3, random_flip=False, shuffle_buffer=16
    )
    batches = _first(cfg, process_index=0, process_count=1)
    image = batches[0]["image"]
    assert image.shape == (8, 32, 32, 3) and image.dtype == np.float32
    assert image.min() >= -1.0 and image.max() <= 1.0 and image.std() > 0.1
    assert batches[0]["label"].dtype == np.int32 and batches[0]["label"].shape == (8,)


def test_flip_mirrors_images_of_the_same_stream(mock_cifar):
    base = DataConfig(
        name="cifar10", image_size=32, channels=3, random_flip=False, shuffle_buffer=1
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
