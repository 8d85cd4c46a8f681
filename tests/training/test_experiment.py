import jax
import pytest

from configs import cifar_ddpm, cifar_dit, digits_ddpm, digits_dit, digits_text_unet
from errors import ConfigError
from training import experiment as experiment_lib


def _expect_error_before_compiling(config, match, monkeypatch):
    def no_compiling(*args, **kwargs):
        raise AssertionError("jax.jit was called before the config was validated")

    monkeypatch.setattr(jax, "jit", no_compiling)
    with pytest.raises(ConfigError, match=match):
        experiment_lib.build_experiment(config)


def test_unknown_schedule(monkeypatch):
    config = digits_ddpm.get_config()
    config.diffusion.schedule = "sigmoid"
    _expect_error_before_compiling(
        config, r"diffusion\.schedule='sigmoid'.*linear, cosine", monkeypatch
    )


def test_batch_not_divisible_by_devices(monkeypatch):
    config = digits_ddpm.get_config()
    config.batch_size = 60
    _expect_error_before_compiling(
        config, r"batch_size=60 .*multiple of the 8 devices", monkeypatch
    )


def test_image_size_the_unet_cannot_halve(monkeypatch):
    config = cifar_ddpm.get_config()
    config.data.image_size = 28  # 28 -> 14 -> 7 -> 3.5
    _expect_error_before_compiling(config, r"image_size.*28", monkeypatch)


def test_unknown_prediction_and_sampler(monkeypatch):
    config = digits_ddpm.get_config()
    config.diffusion.prediction = "score"
    _expect_error_before_compiling(config, r"diffusion\.prediction='score'", monkeypatch)
    config = digits_ddpm.get_config()
    config.sampler.name = "plms"
    _expect_error_before_compiling(config, r"sampler\.name='plms'", monkeypatch)


def test_unknown_dataset_and_model(monkeypatch):
    config = digits_ddpm.get_config()
    config.data.name = "imagenet"
    _expect_error_before_compiling(config, r"data\.name.*imagenet", monkeypatch)
    config = digits_ddpm.get_config()
    config.model.name = "vit"
    _expect_error_before_compiling(config, r"model\.name.*vit", monkeypatch)


def test_valid_configs_build_without_compiling(monkeypatch):
    monkeypatch.setattr(jax, "jit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("jit")))
    for module in (digits_ddpm, cifar_ddpm, digits_dit, cifar_dit):
        experiment = experiment_lib.build_experiment(module.get_config())
        assert experiment.schedule.num_timesteps == 1000


def test_unknown_process_and_non_flow_sampler(monkeypatch):
    config = digits_ddpm.get_config()
    config.diffusion.process = "edm"
    _expect_error_before_compiling(config, r"diffusion\.process='edm'.*ddpm, flow", monkeypatch)
    from configs import digits_flow

    config = digits_flow.get_config()
    config.sampler.name = "dpmpp_2m"
    _expect_error_before_compiling(
        config, r"sampler\.name='dpmpp_2m' cannot integrate diffusion\.process='flow'", monkeypatch
    )


def test_bad_conditioning_is_refused_before_compiling(monkeypatch):
    config = digits_dit.get_config()
    config.conditioning.kind = "caption"
    _expect_error_before_compiling(config, r"conditioning\.kind='caption'", monkeypatch)
    config = digits_ddpm.get_config()
    config.text_encoder.name = "clip"
    _expect_error_before_compiling(config, r"text_encoder\.name='clip' needs", monkeypatch)
    config = digits_dit.get_config()
    config.sampler.class_labels = "4,12"
    _expect_error_before_compiling(config, r"sampler\.class_labels='4,12'", monkeypatch)
    config = digits_dit.get_config()
    config.model.learn_sigma = True
    _expect_error_before_compiling(config, r"model\.learn_sigma=True", monkeypatch)
    config = digits_dit.get_config()
    config.model.patch_size = 3
    _expect_error_before_compiling(config, r"model\.patch_size=3", monkeypatch)


def test_class_conditional_dit_gets_the_class_count_and_null_row(monkeypatch):
    experiment = experiment_lib.build_experiment(digits_dit.get_config())
    assert experiment.step_config.null_id == 10 and experiment.step_config.cond_dropout == 0.1
    assert experiment.model.abstract_params["class_embed"]["embedding"].shape[0] == 11


def test_wrong_types_and_missing_weights_are_config_errors(monkeypatch):
    config = digits_ddpm.get_config()
    config.model.num_groups = None  # ConfigDict lets None through; the U-Net would divide by it
    _expect_error_before_compiling(config, r"model\.num_groups=None .*expected int", monkeypatch)
    config = digits_text_unet.get_config()
    config.text_encoder.path = "/nonexistent/minilm"
    _expect_error_before_compiling(
        config, r"text_encoder\.path='/nonexistent/minilm'.*does not exist", monkeypatch
    )


def test_a_checkpoint_that_does_not_fit_the_config_is_a_config_error():
    """Only loading the encoder shows its position limit; that still names the field."""
    config = digits_text_unet.get_config()
    config.text_encoder.max_length = 10_000
    with pytest.raises(ConfigError, match=r"text_encoder\.max_length=10000 exceeds the 512"):
        experiment_lib.build_experiment(config)
