import itertools
import json
import logging
import math
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from errors import ConfigError
from input_pipeline import folder, pipeline
from input_pipeline.pipeline import DataConfig

# Test images are 16x16 greys: the left half holds 40 + 10 k for image k, the right half 0, so
# a resized copy tells which image it is (its brighter edge column) and whether it was flipped.


def _value(k):
    return 40 + 10 * k


def _write(path, k, *, mode="L", size=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0]), np.uint8)
    pixels[:, : size[0] // 2] = _value(k)
    lossless = {"lossless": True} if path.suffix == ".webp" else {}
    Image.fromarray(pixels).convert(mode).save(path, **lossless)


def _levels(image):
    """float [-1, 1] -> the nearest 8-bit level."""
    return np.round((np.asarray(image) + 1.0) * 127.5).astype(int)


def _ids(batch):
    """Which test image each row is (from its brighter outer column; JPEGs to a level or two)."""
    image = batch["image"]
    edges = np.maximum(_levels(image[:, :, 0, 0]), _levels(image[:, :, -1, 0]))  # [b, H]
    return [round((float(np.median(column)) - 40) / 10) for column in edges]


def _config(data_dir, **changes):
    return DataConfig(**{"name": "folder", "data_dir": str(data_dir), "image_size": 8, **changes})


def _batches(cfg, count=3, *, batch=4, start_step=0, seed=0, process_index=0, process_count=1):
    iterator = pipeline.create_train_iterator(
        cfg,
        per_process_batch_size=batch,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        start_step=start_step,
    )
    return list(itertools.islice(iterator, count))


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_labels_come_from_the_sorted_class_sub_folders(tmp_path):
    names = ("zebra", "ant", "mole")  # labels by sorted name: ant 0, mole 1, zebra 2
    for k in range(9):
        _write(tmp_path / names[k % 3] / f"{k}.png", k)
    _write(tmp_path / "ant" / "deeper" / "9.png", 9)  # any depth below its class folder
    cfg = _config(tmp_path, num_classes=3)
    assert pipeline.num_classes(cfg) == 3
    pipeline.require_data(cfg)
    batches = _batches(cfg, count=2, batch=5)  # 10 images: one epoch
    seen = []
    for batch in batches:
        assert batch["label"].dtype == np.int32 and "text" not in batch
        for k, label in zip(_ids(batch), batch["label"], strict=True):
            assert label == (0 if k == 9 else sorted(names).index(names[k % 3]))
            seen.append(k)
    assert sorted(seen) == list(range(10))


def test_a_flat_folder_is_unlabelled_and_class_counts_are_checked(tmp_path):
    for k in range(4):
        _write(tmp_path / f"{k}.png", k)
    (batch,) = _batches(_config(tmp_path), count=1)
    assert set(batch) == {"image"}
    with pytest.raises(ConfigError, match=r"data.num_classes=2 takes labels from class sub-fold"):
        pipeline.require_data(_config(tmp_path, num_classes=2))
    classes = tmp_path / "classes"
    for k, name in enumerate(("b", "a", "c")):
        _write(classes / name / f"{k}.png", k)
    with pytest.raises(ConfigError, match=r"has 3 class sub-folder\(s\) with images \(a, b, c\)"):
        pipeline.require_data(_config(classes, num_classes=2))
    (batch,) = _batches(_config(tmp_path), count=1, batch=7)  # unlabelled: every depth is read
    assert sorted(_ids(batch)) == [0, 0, 1, 1, 2, 2, 3]  # 7 files, batch 7: one epoch


def test_captions_come_from_txt_files_beside_the_images(tmp_path):
    for k in range(6):
        _write(tmp_path / f"img{k}.jpeg", k)
        (tmp_path / f"img{k}.txt").write_text(f"  caption {k}\n", encoding="utf-8")
    cfg = _config(tmp_path, text_key="text")
    for batch in _batches(cfg, count=3):
        assert batch["text"].dtype == object
        assert list(batch["text"]) == [f"caption {k}" for k in _ids(batch)]
    (tmp_path / "img3.txt").unlink()
    with pytest.raises(ConfigError, match=r"1 of 6 images have no caption \(img3.jpeg\)"):
        pipeline.require_data(cfg)
    (batch,) = _batches(_config(tmp_path), count=1)  # text_key '' : no captions wanted
    assert "text" not in batch


def test_captions_come_from_metadata_jsonl(tmp_path):
    for k in range(4):
        _write(tmp_path / "train" / f"{k}.png", k)
    _write(tmp_path / "more" / "4.webp", 4)
    lines = [{"file_name": f"train/{k}.png", "text": f"photo {k}", "other": 1} for k in range(3)]
    lines.append({"file_name": "train/3.png", "text": ["photo 3", "second caption"]})
    with open(tmp_path / "metadata.jsonl", "w", encoding="utf-8") as file:
        file.write("\n".join(json.dumps(line) for line in lines) + "\n\n")
    (tmp_path / "train" / "0.txt").write_text("not this one")  # the metadata line wins
    (tmp_path / "more" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "4.webp", "text": "photo 4"})  # relative to its own folder
    )
    cfg = _config(tmp_path, text_key="text")
    (batch,) = _batches(cfg, count=1, batch=5)
    assert sorted(batch["text"]) == [f"photo {k}" for k in range(5)]
    assert list(batch["text"]) == [f"photo {k}" for k in _ids(batch)]
    with pytest.raises(ConfigError, match=r"line 1 is not a JSON object with 'file_name' and "):
        pipeline.require_data(_config(tmp_path, text_key="caption"))


def _stripes(short):
    """[short, 3 * short, 3] RGB: red | green (0, 200, 0) | blue thirds."""
    stripes = np.zeros((short, 3 * short, 3), np.uint8)
    stripes[:, :short, 0], stripes[:, short : 2 * short, 1], stripes[:, 2 * short :, 2] = (
        255,
        200,
        255,
    )
    return stripes


def test_images_are_centre_cropped_resized_and_scaled(tmp_path):
    wide = _stripes(20)  # only the green middle third survives the centre crop
    Image.fromarray(wide).save(tmp_path / "a_wide.png")
    Image.fromarray(wide.transpose(1, 0, 2).copy()).save(tmp_path / "b_tall.webp", lossless=True)
    rgba = np.concatenate([wide, np.full((20, 60, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c_rgba.png")
    Image.fromarray(_stripes(32)).save(tmp_path / "d_jpeg.jpg", quality=95)  # block-aligned
    for name in ("a_wide.png", "b_tall.webp", "c_rgba.png"):
        decoded = folder.decode_image(str(tmp_path / name), 6, 3)
        assert decoded.shape == (6, 6, 3) and (decoded == [0, 200, 0]).all(), name
    jpeg = folder.decode_image(str(tmp_path / "d_jpeg.jpg"), 6, 3).astype(int)
    assert np.abs(jpeg - [0, 200, 0]).max() <= 4
    image = _batches(_config(tmp_path, channels=3, image_size=6), count=1)[0]["image"]
    assert image.shape == (4, 6, 6, 3) and image.dtype == np.float32
    green = np.array([0.0, 200.0, 0.0]) / 127.5 - 1.0
    np.testing.assert_allclose(image, np.broadcast_to(green, image.shape), atol=4.5 / 127.5)

    grey = _batches(_config(tmp_path, channels=1, image_size=6), count=1)[0]["image"]
    assert grey.shape == (4, 6, 6, 1)  # ITU-R 601 luma of the green
    np.testing.assert_allclose(grey, round(200 * 0.587) / 127.5 - 1.0, atol=4.5 / 127.5)

    greys = tmp_path / "greys"
    _write(greys / "0.png", 21)  # 'L': left half 250, right half 0
    rgb = _batches(_config(greys, channels=3), count=1, batch=2)[0]["image"]
    assert rgb.shape == (2, 8, 8, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert (_levels(rgb[:, :, 0]) == 250).all() and (rgb[:, :, -1] == -1.0).all()  # [-1, 1]


def test_the_stream_is_deterministic_resumable_and_the_same_decoded_per_batch(tmp_path):
    for k in range(10):
        _write(tmp_path / f"{k:02d}.png", k)
    cfg = _config(tmp_path, random_flip=True)
    full = _batches(cfg, count=6)  # 24 rows: over two epochs of 10
    for a, b in zip(full, _batches(cfg, count=6), strict=True):
        _same(a, b)
    for a, b in zip(full[3:], _batches(cfg, count=3, start_step=3), strict=True):
        _same(a, b)  # a run resumed at step 3 reads what the uninterrupted one did
    per_batch = _batches(_config(tmp_path, random_flip=True, folder_cache_mb=0), count=6)
    for a, b in zip(full, per_batch, strict=True):
        _same(a, b)
    ids = [k for batch in full for k in _ids(batch)]
    assert sorted(ids[:10]) == sorted(ids[10:20]) == list(range(10))  # each epoch, every image
    flipped = np.concatenate([_levels(batch["image"][:, 0, -1, 0]) > 0 for batch in full])
    assert 0 < flipped.sum() < len(flipped)  # flips happen, on some rows only
    other = _batches(cfg, count=1, seed=1)[0]
    assert not np.array_equal(other["image"], full[0]["image"])


def test_two_processes_split_the_global_batch_disjointly(tmp_path):
    for k in range(16):
        _write(tmp_path / ("ab"[k % 2]) / f"{k:02d}.png", k)
        (tmp_path / ("ab"[k % 2]) / f"{k:02d}.txt").write_text(f"text {k}")
    cfg = _config(tmp_path, num_classes=2, text_key="text", random_flip=True)
    whole = _batches(cfg, count=2, batch=8)  # two global batches of 8: one epoch
    parts = [_batches(cfg, count=2, batch=4, process_index=p, process_count=2) for p in (0, 1)]
    for step in range(2):
        first, second = parts[0][step], parts[1][step]
        _same(whole[step], {key: np.concatenate([first[key], second[key]]) for key in first})
        assert list(first["text"]) == [f"text {k}" for k in _ids(first)]
        assert list(second["label"]) == [k % 2 for k in _ids(second)]  # a: 0, b: 1
    ids = [k for part in parts for batch in part for k in _ids(batch)]
    assert sorted(ids) == list(range(16))  # no image in both processes' shares


def _corrupt_folder(root, good=20):
    """`good` readable images, with captions, and two broken files with captions too."""
    for k in range(good):
        _write(root / f"img_{k:02d}.png", k)
        (root / f"img_{k:02d}.txt").write_text(f"image {k}")
    (root / "img_05b.png").write_bytes(b"not an image at all")  # its place goes to img_06
    whole = (root / "img_03.png").read_bytes()
    (root / "img_19z.png").write_bytes(whole[: len(whole) // 2])  # truncated; wraps to img_00
    for name in ("img_05b", "img_19z"):
        (root / f"{name}.txt").write_text("broken")


@pytest.mark.parametrize("cache_mb", [2048, 0], ids=["cached", "per_batch"])
def test_unreadable_images_are_skipped_and_counted(tmp_path, caplog, cache_mb):
    caplog.set_level(logging.WARNING)
    _corrupt_folder(tmp_path)
    cfg = _config(tmp_path, text_key="text", folder_cache_mb=cache_mb)
    batches = _batches(cfg, count=2, batch=11)  # 22 files: one epoch
    ids = [k for batch in batches for k in _ids(batch)]
    assert Counter(ids) == Counter([*range(20), 6, 0])  # the stand-ins, once more each
    for batch in batches:  # label / caption of the file that stands in
        assert list(batch["text"]) == [f"image {k}" for k in _ids(batch)]
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "img_05b.png" in warnings and "img_19z.png" in warnings
    counted = "Skipped 2 of 22 images" if cache_mb else "2 of 22 images so far"
    assert counted in warnings


def test_too_many_unreadable_images_are_an_error_naming_the_folder(tmp_path):
    _corrupt_folder(tmp_path, good=10)  # 2 of 12 > 10%
    with pytest.raises(folder.UnreadableImagesError, match=r"2 of 12 images under .*img_05b"):
        _batches(_config(tmp_path), count=1)
    with pytest.raises(folder.UnreadableImagesError, match=re.escape(str(tmp_path))):
        _batches(_config(tmp_path, folder_cache_mb=0), count=3)  # one epoch: both seen


def test_missing_or_empty_folders_are_config_errors_naming_data_dir(tmp_path):
    missing = _config(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"data.data_dir='.*nowhere' does not exist"):
        pipeline.require_data(missing)
    with pytest.raises(ConfigError, match=r"data.data_dir=.* is empty"):
        pipeline.require_data(_config(tmp_path))
    (tmp_path / "notes.txt").write_text("no images here")
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match=r"data.data_dir=.* holds no images: .*\.webp"):
        _batches(_config(tmp_path), count=1)
    with pytest.raises(ConfigError, match=r"data.data_dir='' is empty; data.name='folder'"):
        pipeline.DataConfig(name="folder").validate()
    with pytest.raises(ConfigError, match=r"data.label_key='label' is for data.name='tfds'"):
        _config(tmp_path, label_key="label").validate()


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compiles")
def test_a_class_conditioned_run_trains_on_a_folder(smallest_config, tmp_path, monkeypatch):
    from training import loop  # noqa: PLC0415 (JAX and the model only for this test)

    for k in range(12):
        _write(tmp_path / "data" / f"class_{k % 3}" / f"{k:02d}.png", k, mode="RGB", size=(20, 14))
    config = smallest_config
    config.data.update(name="folder", data_dir=str(tmp_path / "data"), num_classes=3)
    config.conditioning.kind = "class"
    config.update(num_train_steps=3, log_every_steps=1, checkpoint_every_steps=3)
    config.sample_every_steps = 0
    summaries = []
    summarize = loop.summarize

    def recording(pending, guard):
        summaries.append(summarize(pending, guard))
        return summaries[-1]

    monkeypatch.setattr(loop, "summarize", recording)
    state = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert int(state.step) == 3 and len(summaries) == 3
    assert all(math.isfinite(s["loss"]) and s["skipped_steps"] == 0 for s in summaries)
