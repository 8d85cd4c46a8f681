"""KL autoencoder: parity with diffusers' AutoencoderKL, posterior math, latent scaling, config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from jax.sharding import PartitionSpec as P

from errors import ConfigError
from models import autoencoder as ae
from models.autoencoder_weights import params_from_diffusers
from models.functional import functionalize
from tests.models.autoencoder_checkpoint import TINY, torch_vae

pytestmark = pytest.mark.usefixtures("fast_compiles")  # tests/conftest.py

TOLERANCE = 1e-4  # max-abs error / max-abs of the reference
CONFIGS = {
    "sd": dict(TINY, latent_channels=4),
    # SD3's VAE: 16 latent channels, a shift, no quant convs; here with three levels.
    "sd3": dict(
        TINY,
        block_out_channels=[8, 8, 16],
        latent_channels=16,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ),
    "no_attention": dict(TINY, in_channels=1, out_channels=2, mid_block_add_attention=False),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    """(torch model, our config, our params) converted from the torch state dict."""
    model = torch_vae(**CONFIGS[request.param])
    config = ae.AutoencoderConfig.from_diffusers(dict(model.config))
    tensors = {name: t.numpy() for name, t in model.state_dict().items()}
    return model, config, params_from_diffusers(tensors, config)


def _relative_error(ours: jax.Array, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|, ours NHWC, the reference NCHW."""
    reference = reference.numpy()
    ours = np.asarray(ours).transpose(0, 3, 1, 2)
    assert ours.shape == reference.shape
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def _encode(config, params, images):
    return jax.jit(lambda p, x: ae.bind(config, p).encode(x))(params, images)


def _decode(config, params, latents):
    return jax.jit(lambda p, z: ae.bind(config, p).decode(z))(params, latents)


@pytest.mark.parametrize("height, width", [(16, 16), (15, 13)])  # odd: the asymmetric padding
def test_posterior_matches_diffusers(pair, height, width):
    model, config, params = pair
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, config.in_channels, height, width)).astype(np.float32)
    mean, logvar = _encode(config, params, images.transpose(0, 2, 3, 1))
    with torch.no_grad():
        posterior = model.encode(torch.from_numpy(images)).latent_dist
    assert _relative_error(mean, posterior.mean) < TOLERANCE
    assert _relative_error(logvar, posterior.logvar) < TOLERANCE


def test_decoder_matches_diffusers(pair):
    model, config, params = pair
    latents = np.random.default_rng(1).normal(size=(2, config.latent_channels, 4, 4))
    latents = latents.astype(np.float32)
    images = _decode(config, params, latents.transpose(0, 2, 3, 1))
    size = 4 * config.downsampling_factor
    assert images.shape == (2, size, size, config.out_channels)
    with torch.no_grad():
        reference = model.decode(torch.from_numpy(latents)).sample
    assert _relative_error(images, reference) < TOLERANCE


@pytest.mark.parametrize("pair", ["sd"], indirect=True)
def test_reconstruction_decodes_the_mode_or_a_sample(pair):
    _, config, params = pair
    images = jax.random.uniform(jax.random.key(0), (1, 16, 16, config.in_channels), minval=-1)
    key = jax.random.key(3)
    mean, logvar = _encode(config, params, images)
    run = jax.jit(functionalize(ae.build_autoencoder(config)).apply)
    np.testing.assert_allclose(
        run(params, images, None), _decode(config, params, mean), rtol=1e-5, atol=1e-5
    )
    sampled = _decode(config, params, ae.posterior_sample(mean, logvar, key))
    np.testing.assert_allclose(run(params, images, key), sampled, rtol=1e-5, atol=1e-5)


def test_logvar_is_clipped_like_diffusers():
    config = ae.AutoencoderConfig.from_diffusers(CONFIGS["sd"])
    model = torch_vae(**CONFIGS["sd"])
    tensors = {name: t.numpy().copy() for name, t in model.state_dict().items()}
    images = np.zeros((1, 16, 16, 3), np.float32)
    for offset, bound in ((1e4, 20.0), (-1e4, -30.0)):
        tensors["quant_conv.bias"][4:] = offset  # the logvar half of the moments
        _, logvar = _encode(config, params_from_diffusers(tensors, config), images)
        np.testing.assert_array_equal(logvar, bound)


def test_kl_divergence_closed_form_and_diffusers():
    zeros = jnp.zeros((2, 4, 4, 3))
    np.testing.assert_array_equal(ae.kl_divergence(zeros, zeros), [0.0, 0.0])
    # One element with mean 1, var e: 0.5 * (1 + e - 1 - 1) = (e - 1) / 2.
    mean = jnp.zeros((1, 2, 2, 1)).at[0, 0, 0, 0].set(1.0)
    logvar = jnp.zeros((1, 2, 2, 1)).at[0, 0, 0, 0].set(1.0)
    np.testing.assert_allclose(ae.kl_divergence(mean, logvar), [(np.e - 1) / 2], rtol=1e-6)
    rng = np.random.default_rng(2)
    mean, logvar = rng.normal(size=(2, 2, 4, 5, 3)).astype(np.float32)
    moments = np.concatenate([mean, logvar], axis=-1).transpose(0, 3, 1, 2)
    reference = DiagonalGaussianDistribution(torch.from_numpy(moments)).kl().numpy()
    np.testing.assert_allclose(ae.kl_divergence(mean, logvar), reference, rtol=1e-5)


def test_posterior_sample_is_the_reparameterised_normal():
    key = jax.random.key(7)
    mean = jnp.full((4, 50, 50, 16), 1.5)
    logvar = jnp.full(mean.shape, np.log(0.25))
    sample = ae.posterior_sample(mean, logvar, key)
    expected = mean + 0.5 * jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(sample, expected, rtol=1e-6)
    # 160,000 draws: standard errors 0.0013 (mean) and 0.0009 (std).
    assert abs(float(sample.mean()) - 1.5) < 0.01
    assert abs(float(sample.std()) - 0.5) < 0.01
    np.testing.assert_array_equal(ae.posterior_mode(mean, logvar), mean)


def test_latent_scaling_and_its_inverse():
    config = ae.AutoencoderConfig(scaling_factor=2.0, shift_factor=0.5)
    z = jnp.array([0.5, 1.0, -1.5])
    np.testing.assert_allclose(ae.to_latent(z, config), [0.0, 1.0, -4.0])
    np.testing.assert_allclose(ae.from_latent(ae.to_latent(z, config), config), z)
    sd = ae.AutoencoderConfig()
    np.testing.assert_allclose(ae.to_latent(z, sd), z * 0.18215)


def test_params_carry_logical_axis_names():
    specs = functionalize(ae.build_autoencoder(ae.AutoencoderConfig(**TINY))).logical_specs
    assert specs["encoder"]["conv_in"]["kernel"] == P(None, None, "conv_in", "conv_out")
    attention = specs["decoder"]["mid_block"]["attentions"][0]
    assert attention["to_q"]["kernel"] == P("embed", "heads")
    assert attention["to_out"][0]["kernel"] == P("heads", "embed")
    assert attention["group_norm"]["scale"] == P("norm")


def test_config_from_diffusers_defaults_and_round_trip():
    config = ae.AutoencoderConfig.from_diffusers({"_class_name": "AutoencoderKL"})
    assert config.block_out_channels == (64,)  # AutoencoderKL's own defaults
    assert (config.layers_per_block, config.shift_factor) == (1, 0.0)
    sd3 = ae.AutoencoderConfig.from_diffusers(CONFIGS["sd3"])
    assert (sd3.latent_channels, sd3.shift_factor, sd3.use_quant_conv) == (16, 0.0609, False)
    assert ae.AutoencoderConfig.from_diffusers(sd3.to_diffusers()) == sd3
    assert sd3.to_diffusers()["down_block_types"] == ["DownEncoderBlock2D"] * 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"down_block_types": ["AttnDownEncoderBlock2D"] * 2}, "AttnDownEncoderBlock2D"),
        ({"up_block_types": ["UpDecoderBlock2D"]}, "one per entry of block_out_channels"),
        ({"_class_name": "AutoencoderTiny"}, "only AutoencoderKL"),
        ({"latents_mean": [0.1] * 4}, "latents_mean"),
        ({"norm_type": "spatial"}, "Unknown AutoencoderKL config keys: norm_type"),
        ({"norm_num_groups": 3}, "norm_num_groups=3 must be >= 1 and divide"),
        ({"act_fn": "gelu"}, "act_fn='gelu' is not known"),
        ({"latent_channels": 0}, "latent_channels=0 must be >= 1"),
    ],
)
def test_config_refuses_what_it_cannot_build(change, message):
    with pytest.raises(ConfigError, match=message):
        ae.AutoencoderConfig.from_diffusers({**CONFIGS["sd"], **change})
