"""input_pipeline/full_split.py: every image of a split once, in order, as 8-bit values."""

import numpy as np
import pytest

from input_pipeline import digits, full_split
from input_pipeline.pipeline import DataConfig
from tests.input_pipeline.test_tfds_source import prepared_cifar  # noqa: F401 (fixture)


def test_to_unit_range_rounds_to_8_bit_levels():
    images = np.array([-1.0, -0.999, 0.0, 0.5, 1.0, 1.2], np.float32)
    levels = full_split.to_unit_range(images) * 255.0
    np.testing.assert_allclose(levels, [0, 0, 128, 191, 255, 255], atol=1e-4)


def test_digits_split_is_every_image_once_and_processes_partition_it():
    cfg = DataConfig(name="digits", image_size=16)
    whole = np.concatenate(list(full_split.iterate_split(cfg, "train", 500)))
    images, _ = digits.load_digits_images(16)
    assert whole.shape == (1797, 16, 16, 1) and full_split.split_size(cfg, "train") == 1797
    np.testing.assert_allclose(whole, full_split.to_unit_range(images))
    parts = [
        np.concatenate(list(full_split.iterate_split(cfg, "train", 64, p, 3))) for p in range(3)
    ]
    assert sum(len(p) for p in parts) == 1797
    np.testing.assert_array_equal(np.concatenate(parts), whole)  # array_split keeps the order


def test_digits_fit_and_held_out_splits_partition_the_images():
    cfg = DataConfig(name="digits")
    fit = np.concatenate(list(full_split.iterate_split(cfg, "fit", 500)))
    held_out = np.concatenate(list(full_split.iterate_split(cfg, "held_out", 500)))
    assert (len(fit), len(held_out)) == (1437, 360)
    assert full_split.split_size(cfg, "held_out") == 360
    every = {x.tobytes() for x in np.concatenate(list(full_split.iterate_split(cfg, "train", 500)))}
    assert {x.tobytes() for x in np.concatenate([fit, held_out])} == every
    with pytest.raises(ValueError, match="digits split must be one of.*'test'"):
        next(full_split.iterate_split(cfg, "test", 8))


def test_cifar_split_is_read_once_in_order_without_flips(prepared_cifar):  # noqa: F811
    data_dir, train = prepared_cifar
    cfg = DataConfig(name="cifar10", data_dir=data_dir, image_size=32, channels=3, random_flip=True)
    batches = list(full_split.iterate_split(cfg, "train", 6))
    images = np.concatenate(batches)
    assert [len(b) for b in batches] == [6, 6, 6, 2] and full_split.split_size(cfg, "train") == 20
    as_bytes = {np.rint(x * 255.0).astype(np.uint8).tobytes() for x in images}
    assert as_bytes == train  # every training image, unflipped, exactly as stored
    shares = [np.concatenate(list(full_split.iterate_split(cfg, "train", 6, p, 2))) for p in (0, 1)]
    assert len(shares[0]) + len(shares[1]) == 20
    assert {x.tobytes() for x in np.concatenate(shares)} == {x.tobytes() for x in images}


def test_a_folder_is_read_whole_in_file_order(tmp_path):
    from PIL import Image  # noqa: PLC0415

    for i in range(5):
        Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "5.png").write_bytes(b"not a png")
    cfg = DataConfig(name="folder", data_dir=str(tmp_path), image_size=4, channels=3)
    assert full_split.split_size(cfg, "train") == 6
    batches = list(full_split.iterate_split(cfg, "train", batch_size=2))
    values = np.concatenate(batches)[:, 0, 0, 0] * 255
    np.testing.assert_allclose(values, [0, 40, 80, 120, 160], atol=1e-3)
    halves = [np.concatenate(list(full_split.iterate_split(cfg, "train", 8, p, 2))) for p in (0, 1)]
    assert sum(len(h) for h in halves) == 5
