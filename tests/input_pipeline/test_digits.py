import itertools

import numpy as np

from input_pipeline import digits
from input_pipeline.pipeline import DataConfig


def _batches(start_step=0, count=3, process_index=0, process_count=1, flip=False, seed=0, size=8):
    cfg = DataConfig(name="digits", image_size=size, channels=1, random_flip=flip)
    it = digits.create_iterator(
        cfg,
        per_process_batch_size=32,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        start_step=start_step,
    )
    return list(itertools.islice(it, count))


def test_images_are_in_range_with_the_right_shapes():
    images, labels = digits.load_digits_images()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
    assert images.min() == -1.0 and images.max() == 1.0
    assert labels.dtype == np.int32 and set(labels) == set(range(10))
    batch = _batches(count=1)[0]
    assert batch["image"].shape == (32, 8, 8, 1) and batch["label"].shape == (32,)


def test_larger_sizes_repeat_pixels():
    big = _batches(count=1, size=16)[0]["image"]
    small = _batches(count=1)[0]["image"]
    np.testing.assert_array_equal(big[:, ::2, ::2], small)


def test_three_channels_repeat_the_grey_value():
    grey, _ = digits.load_digits_images(16)
    rgb, _ = digits.load_digits_images(16, channels=3)
    assert rgb.shape == (*grey.shape[:3], 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], grey[..., 0])


def test_resuming_reproduces_the_uninterrupted_stream():
    full = _batches(count=5)
    resumed = _batches(start_step=3, count=2)
    for a, b in zip(full[3:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(full[0]["image"], full[1]["image"])


def test_an_epoch_visits_every_example_once():
    indices = np.concatenate([digits.global_batch_indices(1797, 599, s, seed=0) for s in range(3)])
    assert sorted(indices) == list(range(1797))


def test_processes_split_the_global_batch():
    (p0,) = _batches(count=1, process_index=0, process_count=2)
    (p1,) = _batches(count=1, process_index=1, process_count=2)
    images, _ = digits.load_digits_images()
    idx = digits.global_batch_indices(1797, 64, 0, seed=0)
    np.testing.assert_array_equal(np.concatenate([p0["image"], p1["image"]]), images[idx])


def test_flips_mirror_some_images():
    plain = _batches(count=1)[0]["image"]
    flipped = _batches(count=1, flip=True)[0]["image"]
    mirrored = [
        np.array_equal(f, p[:, ::-1]) and not np.array_equal(f, p)
        for f, p in zip(flipped, plain, strict=True)
    ]
    kept = [np.array_equal(f, p) for f, p in zip(flipped, plain, strict=True)]
    assert 4 < sum(mirrored) < 28 and all(m or k for m, k in zip(mirrored, kept, strict=True))
