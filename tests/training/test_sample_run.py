import os

import numpy as np
import pytest

from training import loop, sample_run


def test_sampling_without_a_checkpoint_says_so(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        sample_run.sample_from_checkpoint(tiny_config, str(tmp_path))


@pytest.mark.slow
def test_sample_mode_writes_png_and_npz_for_each_sampler(tiny_config, tmp_path):
    workdir = str(tmp_path)
    tiny_config.num_train_steps = 2
    tiny_config.sample_every_steps = 0
    loop.train_and_evaluate(tiny_config, workdir)
    for name in ("ddpm", "euler_ancestral", "dpmpp_2m_sde", "lms", "unipc"):
        tiny_config.sampler.name = name
        tiny_config.sampler.num_steps = 1000 if name == "ddpm" else 6
        tiny_config.sampler.num_samples = 10  # not a multiple of 8 devices: padded, then trimmed
        samples = sample_run.sample_from_checkpoint(tiny_config, workdir)
        stem = os.path.join(
            workdir, "samples", f"{name}_{tiny_config.sampler.num_steps}steps_step00000002"
        )
        saved = np.load(stem + ".npz")["samples"]
        assert saved.shape == (10, 8, 8, 1) and saved.dtype == np.float32
        np.testing.assert_array_equal(saved, samples)
        assert saved.min() >= -1.0 and saved.max() <= 1.0  # static thresholding keeps the range
        assert os.path.exists(stem + ".png")


@pytest.mark.slow
def test_class_conditional_run_trains_with_dropout_and_samples_each_label(tiny_config, tmp_path):
    workdir = str(tmp_path)
    tiny_config.conditioning.kind = "class"
    tiny_config.num_train_steps = 2
    tiny_config.sample_every_steps = 2  # the training-time grid runs the guided chain too
    tiny_config.sampler.num_samples = 3
    tiny_config.sampler.class_labels = "1,4"
    loop.train_and_evaluate(tiny_config, workdir)
    assert os.path.exists(os.path.join(workdir, "samples", "step_00000002.png"))
    drawn = []
    for scale in (0.0, 3.0):
        tiny_config.sampler.guidance_scale = scale
        samples = sample_run.sample_from_checkpoint(tiny_config, workdir)
        drawn.append(samples)
        saved = np.load(
            os.path.join(workdir, "samples", f"ddim_5steps_cfg{scale:g}_step00000002.npz")
        )
        assert samples.shape == (6, 8, 8, 1)
        np.testing.assert_array_equal(saved["prompt_ids"], [0, 0, 0, 1, 1, 1])
        assert list(saved["prompts"]) == ["1", "4"]
    assert not np.allclose(drawn[0], drawn[1])  # the guidance scale reaches the chain


@pytest.mark.slow
def test_text_conditional_run_samples_prompts_with_a_negative_prompt(tiny_config, tmp_path):
    from configs import digits_text_unet

    config = digits_text_unet.get_config()
    for field in ("model", "optimizer", "mesh"):  # the tiny network, the real MiniLM encoder
        config[field] = tiny_config[field]
    config.batch_size = 16
    config.num_train_steps = 2
    config.log_every_steps = config.checkpoint_every_steps = 2
    config.sample_every_steps = 0
    config.sampler.num_steps = 4
    config.sampler.num_samples = 3
    workdir = str(tmp_path)
    loop.train_and_evaluate(config, workdir)
    config.sampler.prompts = "a handwritten digit seven;a handwritten digit two"
    config.sampler.negative_prompt = "a blurry smudge"
    samples = sample_run.sample_from_checkpoint(config, workdir)
    saved = np.load(os.path.join(workdir, "samples", "ddim_4steps_cfg3_step00000002.npz"))
    assert samples.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(saved["prompt_ids"], [0, 0, 0, 1, 1, 1])
    assert list(saved["prompts"]) == ["a handwritten digit seven", "a handwritten digit two"]
    assert os.path.exists(os.path.join(workdir, "samples", "ddim_4steps_cfg3_step00000002.png"))
