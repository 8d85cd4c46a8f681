"""A generic tfds dataset with image, text and class-label features, built offline in a temp
data_dir."""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline.pipeline import DataConfig, create_train_iterator

CAPTIONS = ["a red square", "a blue field", "a green stripe", "a dark corner"]


class TinyCaptioned(tfds.core.GeneratorBasedBuilder):
    """12 non-square RGB images, each with a caption and a class (i % 3)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "photo": tfds.features.Image(shape=(12, 16, 3)),
                    "caption": tfds.features.Text(),
                    "kind": tfds.features.ClassLabel(num_classes=3),
                    "meta": {"alt": tfds.features.Sequence(tfds.features.Text())},
                }
            )
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for i in range(12):
            image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            alt = [f"alt {CAPTIONS[i % 4]}", "second"]
            example = {"photo": image, "caption": CAPTIONS[i % 4], "kind": i % 3}
            yield i, {**example, "meta": {"alt": alt}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tfds")
    TinyCaptioned(data_dir=str(directory)).download_and_prepare()
    return str(directory)


def _config(data_dir, **changes):
    fields = dict(
        name="tfds",
        tfds_name="tiny_captioned",
        data_dir=data_dir,
        image_key="photo",
        text_key="caption",
        image_size=8,
        channels=3,
        shuffle_buffer=4,
    )
    return DataConfig(**{**fields, **changes})


def test_images_are_cropped_resized_and_carry_their_captions(data_dir):
    stream = create_train_iterator(
        _config(data_dir), per_process_batch_size=4, seed=0, process_index=0, process_count=1
    )
    batches = list(itertools.islice(stream, 3))
    for batch in batches:
        assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.float32
        assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        assert batch["text"].shape == (4,) and all(t in CAPTIONS for t in batch["text"])
        assert "label" not in batch


def test_nested_text_features_take_the_first_caption(data_dir):
    stream = create_train_iterator(
        _config(data_dir, text_key="meta/alt"),
        per_process_batch_size=4,
        seed=0,
        process_index=0,
        process_count=1,
    )
    assert all(t.startswith("alt ") and t[4:] in CAPTIONS for t in next(stream)["text"])


def test_grayscale_output_and_two_processes_read_disjoint_halves(data_dir):
    gray = _config(data_dir, channels=1)
    seen = []
    for process in (0, 1):
        stream = create_train_iterator(
            gray, per_process_batch_size=6, seed=0, process_index=process, process_count=2
        )
        batch = next(stream)
        assert batch["image"].shape == (6, 8, 8, 1)
        seen.append({tuple(np.round(img.ravel()[:8], 4)) for img in batch["image"]})
    assert not seen[0] & seen[1]


def test_a_class_label_feature_labels_each_image(data_dir):
    stream = create_train_iterator(
        _config(data_dir, label_key="kind", num_classes=3),
        per_process_batch_size=4,
        seed=0,
        process_index=0,
        process_count=1,
    )
    batches = list(itertools.islice(stream, 3))  # all 12 examples (one epoch)
    labels = np.concatenate([b["label"] for b in batches])
    assert labels.dtype == np.int32 and sorted(labels.tolist()) == sorted([0, 1, 2] * 4)
    # Each image keeps its own label: the caption (i % 4) and label (i % 3) pin i.
    pairs = {
        (text, int(label))
        for b in batches
        for text, label in zip(b["text"], b["label"], strict=True)
    }
    assert pairs == {(CAPTIONS[i % 4], i % 3) for i in range(12)}


def _first_batch(config):
    stream = create_train_iterator(
        config, per_process_batch_size=2, seed=0, process_index=0, process_count=1
    )
    return next(stream)


def test_label_features_that_are_not_the_configured_classes_are_named(data_dir):
    with pytest.raises(ValueError, match=r"data\.num_classes=10 but .*'kind' has 3 .*=3"):
        _first_batch(_config(data_dir, label_key="kind", num_classes=10))
    with pytest.raises(ValueError, match=r"data\.label_key='caption' is a Text .*ClassLabel"):
        _first_batch(_config(data_dir, label_key="caption", num_classes=3))


def test_unknown_feature_and_missing_name_are_named(data_dir):
    with pytest.raises(ValueError, match=r"data\.text_key='title' .*photo"):
        next(
            create_train_iterator(
                _config(data_dir, text_key="title"),
                per_process_batch_size=2,
                seed=0,
                process_index=0,
                process_count=1,
            )
        )
    with pytest.raises(ValueError, match=r"data\.tfds_name"):
        _config(data_dir, tfds_name="").validate()
