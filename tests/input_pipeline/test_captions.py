import numpy as np
import pytest

from input_pipeline import captions, pipeline


def test_digit_captions_name_the_label_in_several_phrasings():
    table = captions.caption_table("digits")
    templates = len(captions.CAPTIONS["digits"][0])
    assert len(table) == 10 * templates and templates >= 3
    assert table[7 * templates] == "a handwritten digit seven"
    for label, name in enumerate(captions.DIGIT_NAMES):
        rows = table[label * templates : (label + 1) * templates]
        assert len(set(rows)) == templates and all(name in row for row in rows)


def test_cifar_captions_use_the_right_article():
    table = captions.caption_table("cifar10")
    assert table[0] == "a photo of an airplane" and table[3] == "a photo of a cat"
    assert captions.class_prompts("cifar10")[9] == "a photo of a truck"


def test_caption_ids_point_at_the_label_and_are_a_pure_function_of_position():
    labels = np.array([0, 3, 9, 3, 3, 3, 3, 3])
    ids = captions.caption_ids(labels, "digits", seed=1, step=5, process_index=0)
    table = captions.caption_table("digits")
    assert all(
        captions.DIGIT_NAMES[label] in table[i] for label, i in zip(labels, ids, strict=True)
    )
    again = captions.caption_ids(labels, "digits", seed=1, step=5, process_index=0)
    np.testing.assert_array_equal(ids, again)
    assert len(set(ids[1:].tolist())) > 1  # the phrasings vary


def test_digit_batches_carry_caption_ids_and_resume_identically():
    cfg = pipeline.DataConfig()
    kwargs = dict(per_process_batch_size=16, seed=0, process_index=0, process_count=1)
    stream = pipeline.create_train_iterator(cfg, **kwargs)
    batches = [next(stream) for _ in range(3)]
    resumed = next(pipeline.create_train_iterator(cfg, start_step=2, **kwargs))
    np.testing.assert_array_equal(resumed["caption_id"], batches[2]["caption_id"])
    templates = len(captions.CAPTIONS["digits"][0])
    np.testing.assert_array_equal(batches[0]["caption_id"] // templates, batches[0]["label"])


def test_unknown_dataset_has_no_captions():
    with pytest.raises(ValueError, match="data.name='mnist' has no captions; .*digits"):
        captions.caption_table("mnist")


def test_two_processes_slices_concatenate_to_the_one_process_captions():
    labels = np.arange(8) % 10
    whole = captions.caption_ids(labels, "digits", seed=3, step=7, process_index=0)
    halves = [
        captions.caption_ids(
            labels[4 * p : 4 * p + 4], "digits", seed=3, step=7, process_index=p, process_count=2
        )
        for p in (0, 1)
    ]
    np.testing.assert_array_equal(np.concatenate(halves), whole)
