"""Latent diffusion: the train step encodes, sample chains decode; the two-stage digits pipeline."""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sharding
from errors import ConfigError
from models import autoencoder as ae
from models.autoencoder_weights import load_autoencoder, save_autoencoder
from models.functional import init_params
from tests.xla_optimisations import optimisations_off
from training import loop
from training.experiment import build_experiment
from training.run_config import RunConfig
from training.train_step import train_step

TINY_VAE = ae.AutoencoderConfig(
    in_channels=1,
    out_channels=1,
    latent_channels=4,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    sample_size=16,
    scaling_factor=0.7,
    shift_factor=0.1,
)


@pytest.fixture
def vae_dir(tmp_path):
    """A random tiny autoencoder (16x16x1 -> 8x8x4) saved in diffusers format."""
    params = init_params(ae.build_autoencoder(TINY_VAE), 0)
    return str(save_autoencoder(tmp_path / "vae", TINY_VAE, params))


@pytest.fixture
def latent_config(tiny_config, vae_dir):
    tiny_config.data.image_size = 16
    tiny_config.autoencoder.path = vae_dir
    tiny_config.sampler.thresholding = "none"
    return tiny_config


def test_the_model_is_built_for_the_latent_grid(latent_config):
    run = RunConfig.from_configdict(latent_config, 8, 1)
    assert (run.model.image_size, run.model.in_channels, run.model.out_channels) == (8, 4, 4)
    experiment = build_experiment(run)
    assert experiment.image_shape == (8, 8, 4)
    assert experiment.frozen.autoencoder is experiment.latent.params


def _config_only(directory, **changes):
    """A directory with just the config.json of TINY_VAE changed (what the config checks read)."""
    directory.mkdir()
    config = dataclasses.replace(TINY_VAE, **changes).to_diffusers()
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


def test_images_that_do_not_fit_the_autoencoder_are_refused(latent_config, tmp_path):
    latent_config.data.image_size = 24
    deep = dict(block_out_channels=(8, 8, 8, 8, 8))  # downsampling factor 16
    latent_config.autoencoder.path = _config_only(tmp_path / "deep", **deep)
    with pytest.raises(ConfigError, match=r"data.image_size=24.*multiple.*factor 16"):
        RunConfig.from_configdict(latent_config, 8, 1)
    latent_config.data.image_size = 16
    latent_config.autoencoder.path = _config_only(tmp_path / "rgb", in_channels=3)
    with pytest.raises(ConfigError, match=r"data.channels=1.*in_channels=3"):
        RunConfig.from_configdict(latent_config, 8, 1)
    latent_config.autoencoder.path = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="autoencoder.path=.*nowhere"):
        RunConfig.from_configdict(latent_config, 8, 1)


def test_the_step_trains_on_encoded_latents(latent_config):
    latent_config.autoencoder.sample_posterior = False  # the posterior mean: no draw to match
    experiment = build_experiment(latent_config)
    state, _ = loop.create_state(experiment, seed=0)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (16, 16, 16, 1)), jnp.float32)
    static = dict(
        model=experiment.model,
        schedule=experiment.schedule,
        optimizer=experiment.optimizer,
        learning_rate_fn=experiment.learning_rate_fn,
    )
    encoded_step = jax.jit(functools.partial(train_step, config=experiment.step_config, **static))
    _, encoded_metrics = encoded_step(state, {"image": images}, experiment.frozen)
    mean, _ = ae.bind(TINY_VAE, experiment.latent.params).encode(images)
    latents = ae.to_latent(mean, TINY_VAE)
    pixel_config = dataclasses.replace(experiment.step_config, latent=None)
    latent_step = jax.jit(functools.partial(train_step, config=pixel_config, **static))
    _, latent_metrics = latent_step(state, {"image": latents}, None)
    np.testing.assert_allclose(encoded_metrics["loss"], latent_metrics["loss"], rtol=1e-5)


def test_sample_chains_end_in_the_decoder(latent_config):
    experiment = build_experiment(latent_config)
    state, shardings = loop.create_state(experiment, seed=0)
    sample_fn = loop.experiment_sample_fn(experiment, shardings.ema_params)
    images = sample_fn(state.ema_params, jax.random.key(0))
    assert images.shape == (16, 16, 16, 1)  # pixels, not 8x8x4 latents
    on_device = sample_fn.on_device(state.ema_params, jax.random.key(0))  # decoded there too
    assert on_device.shape == (16, 16, 16, 1)
    np.testing.assert_allclose(np.asarray(on_device), images, atol=1e-6)


@pytest.mark.slow
def test_chunked_decoding_equals_decoding_at_once_and_stays_batch_sharded(latent_config):
    """decode_chunk bounds decoder memory (lax.map over chunks) without changing a pixel, and the
    decoded images stay split over the devices like the chain."""
    experiment = build_experiment(latent_config)
    state, shardings = loop.create_state(experiment, seed=0)
    latents = jax.random.normal(jax.random.key(1), (16, 8, 8, 4))
    whole = experiment.latent.decode(experiment.latent.params, latents)
    chunked = dataclasses.replace(experiment.latent, decode_chunk=3)  # 16 = 3+3+3+3+3+1
    np.testing.assert_allclose(chunked.decode(chunked.params, latents), whole, atol=1e-5)

    latent_config.autoencoder.decode_chunk = 1  # one image per device at a time
    chunked_experiment = build_experiment(latent_config)
    sample_fn = loop.experiment_sample_fn(chunked_experiment, shardings.ema_params)
    images = sample_fn.on_device(state.ema_params, jax.random.key(0))
    reference = loop.experiment_sample_fn(experiment, shardings.ema_params)
    np.testing.assert_allclose(
        np.asarray(images), reference(state.ema_params, jax.random.key(0)), atol=1e-5
    )
    assert images.sharding.spec[0] is not None  # the batch axis is split over devices
    assert len(images.sharding.device_set) == 8


@pytest.mark.slow
def test_autoencoder_run_exports_what_a_latent_run_then_trains_on(tiny_config, tmp_path):
    from configs import digits_vae
    from tests.training.test_loop import _scalars

    vae = digits_vae.get_config()
    vae.num_train_steps = 4
    vae.batch_size = 16
    vae.log_every_steps = vae.checkpoint_every_steps = vae.sample_every_steps = 2
    vae.model.block_out_channels = (8, 16)
    vae.model.norm_num_groups = 4
    vae_dir = str(tmp_path / "vae")
    loop.train_and_evaluate(vae, vae_dir)
    scalars = _scalars(vae_dir)
    assert [step for step, _ in scalars["reconstruction_psnr_db"]] == [2, 4]
    assert "kl_per_element" in scalars and os.listdir(os.path.join(vae_dir, "samples"))
    exported = os.path.join(vae_dir, "autoencoder")
    config, params = load_autoencoder(exported)
    with open(os.path.join(exported, "config.json")) as file:
        assert json.load(file)["scaling_factor"] == config.scaling_factor != 1.0

    tiny_config.data.image_size = 16
    tiny_config.autoencoder.path = exported
    tiny_config.sampler.thresholding = "none"
    latent_dir = str(tmp_path / "latent")
    state = loop.train_and_evaluate(tiny_config, latent_dir)
    assert int(state.step) == tiny_config.num_train_steps
    assert os.listdir(os.path.join(latent_dir, "samples"))  # a grid of decoded 16x16 samples


def _leaves(state) -> list[np.ndarray]:
    fields = (state.params, state.ema_params, state.opt_state, jax.random.key_data(state.rng))
    return [np.asarray(leaf) for leaf in jax.tree.leaves(fields)]


@pytest.mark.slow
def test_an_interrupted_latent_run_resumes_to_the_same_bits(latent_config, tmp_path):
    """Posterior draws, noise and dropout all come from the checkpointed RNG: stopping at step 2
    and resuming gives the uninterrupted run's state at step 4, bit for bit."""
    latent_config.sample_every_steps = 0
    whole = jax.device_get(loop.train_and_evaluate(latent_config, str(tmp_path / "whole")))
    latent_config.num_train_steps = 2
    loop.train_and_evaluate(latent_config, str(tmp_path / "split"))
    latent_config.num_train_steps = 4
    resumed = jax.device_get(loop.train_and_evaluate(latent_config, str(tmp_path / "split")))
    assert int(resumed.step) == int(whole.step) == 4
    for a, b in zip(_leaves(resumed), _leaves(whole), strict=True):
        np.testing.assert_array_equal(a, b)


def _two_latent_steps(config, devices):
    experiment = build_experiment(config, devices)
    state, shardings = loop.create_state(experiment, seed=0)
    step = loop.make_train_step(experiment, shardings)
    rng = np.random.default_rng(0)
    host = {
        "image": rng.uniform(-1, 1, (config.batch_size, 16, 16, 1)).astype(np.float32),
        "label": np.arange(config.batch_size, dtype=np.int32) % 10,
    }
    for _ in range(2):
        batch = sharding.host_batch_to_global(host, experiment.mesh)
        state, metrics = step(state, batch, experiment.frozen)
    return state, float(metrics["loss"])


@pytest.mark.slow
def test_a_latent_step_on_8_devices_equals_one_device(latent_config):
    """Encoding (posterior draws included) is sharded with the batch and changes no number."""
    with optimisations_off():  # both programs compiled the same way: the numbers still compare
        latent_config.mesh.data, latent_config.mesh.fsdp = 4, 2
        sharded, sharded_loss = _two_latent_steps(latent_config, jax.devices())
        latent_config.mesh.data, latent_config.mesh.fsdp = 1, 1
        single, single_loss = _two_latent_steps(latent_config, jax.devices()[:1])
    np.testing.assert_allclose(sharded_loss, single_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params), strict=True):
        # Adam's 1/sqrt(v) amplifies reduction-order noise: 1% of one step (lr 1e-3), as in
        # tests/training/test_train_step.py.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
