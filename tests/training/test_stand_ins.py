import jax
import pytest

from configs import digits_latent, imagenet_latent_dit, sd_pretrained
from errors import ConfigError
from training import stand_ins
from training.experiment import build_experiment
from training.run_config import RunConfig


def test_a_missing_sd_pipeline_becomes_sd15s_architecture(tmp_path):
    config = sd_pretrained.get_config()
    config.pretrained.path = str(tmp_path / "nowhere" / "stable-diffusion-v1-5")
    changed, replaced = stand_ins.substitute(config, str(tmp_path / "stand_ins"))
    assert replaced == {"pretrained.path": config.pretrained.path}
    run = RunConfig.from_configdict(changed, 1, 1)
    # SD 1.5 as the pipeline fixes it: 512 px through the f8 VAE, CLIP ViT-L/14 text (768 wide,
    # 77 tokens), 4 levels of 320-1280 channels, attention at the first three.
    assert (run.data.image_size, run.data.channels) == (512, 3)
    assert (run.text_encoder.name, run.text_encoder.max_length) == ("clip", 77)
    assert run.model.context_dim == 768 and run.model.image_size == 64
    assert run.model.base_channels == 320 and tuple(run.model.channel_mult) == (1, 2, 4, 4)
    experiment = build_experiment(run, jax.devices()[:1], shape_only_weights=True)
    params = sum(leaf.size for leaf in jax.tree.leaves(experiment.model.abstract_params))
    assert params == 859_520_964  # diffusers' UNet2DConditionModel of SD 1.5
    assert experiment.image_shape == (64, 64, 4)
    bank = experiment.caption_bank
    assert bank.tokens.shape[1:] == (77, 768)  # zero embeddings of the real shapes


def test_missing_autoencoders_take_their_named_architecture(tmp_path):
    for get_config, factor, latents in (
        (imagenet_latent_dit.get_config, 8, (32, 32, 4)),  # sd-vae-ft-ema
        (digits_latent.get_config, 2, None),  # what configs/digits_vae.py exports
    ):
        config = get_config()
        changed, replaced = stand_ins.substitute(config, str(tmp_path / "stand_ins"))
        assert list(replaced) == ["autoencoder.path"]
        run = RunConfig.from_configdict(changed, 1, 1)
        experiment = build_experiment(run, jax.devices()[:1], shape_only_weights=True)
        assert experiment.latent.config.downsampling_factor == factor
        if latents:
            assert experiment.image_shape == latents
        leaves = jax.tree.leaves(experiment.latent.params)
        assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)


def test_paths_that_exist_are_kept_and_unknown_missing_ones_named(tmp_path):
    config = imagenet_latent_dit.get_config()
    config.autoencoder.path = str(tmp_path)
    assert stand_ins.substitute(config, str(tmp_path / "s"))[1] == {}
    config.autoencoder.path = "checkpoints/my-own-vae"
    with pytest.raises(ConfigError, match=r"autoencoder.path='checkpoints/my-own-vae'.*sd-vae"):
        stand_ins.substitute(config, str(tmp_path / "s"))
