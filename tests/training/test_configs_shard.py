"""Every config in configs/ trains sharded, under pure data parallelism and under FSDP.

Digits configs take real steps on synthetic batches; CIFAR and ImageNet configs (whose data is
not on this machine) compile their full-size train step on shape-only inputs. Latent configs read
a random autoencoder of their architecture's downsampling factor and latent channels.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sharding
from configs import (
    cifar_ddpm,
    cifar_dit,
    cifar_text,
    digits_ddpm,
    digits_dit,
    digits_flow,
    digits_latent,
    digits_text_unet,
    digits_vae,
    imagenet_latent_dit,
)
from models import autoencoder as ae
from models.autoencoder_weights import save_autoencoder
from models.functional import init_params
from training import loop
from training.experiment import build_experiment

MESHES = {"data": (8, 1), "fsdp": (1, 8)}


# What is checked here (the step compiles sharded, runs, splits the state) does not depend on
# XLA's optimisation passes, which are most of each full-size compile's time: skip them.
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _host_batch(experiment, batch_size):
    size, channels = experiment.data.image_size, experiment.data.channels
    rng = np.random.default_rng(0)
    return {
        "image": rng.uniform(-1, 1, (batch_size, size, size, channels)).astype(np.float32),
        "label": (np.arange(batch_size) % 10).astype(np.int32),
        "caption_id": (np.arange(batch_size) % 10).astype(np.int32),
    }


# Every digits config already takes real data-parallel steps (the default mesh) in the end-to-end
# runs of test_loop.py and test_sample_run.py, so here they step under FSDP only.
DIGITS_MODULES = (digits_ddpm, digits_flow, digits_dit, digits_text_unet, digits_vae, digits_latent)
DIGITS_CASES = [(module, "fsdp") for module in DIGITS_MODULES]
CIFAR_CASES = [(module, mesh) for module in (cifar_ddpm, cifar_dit) for mesh in MESHES] + [
    (cifar_text, "fsdp"),
    (imagenet_latent_dit, "fsdp"),
]


def _random_autoencoder(directory, **fields) -> str:
    """A randomly initialised AutoencoderKL saved in diffusers format; returns its path."""
    config = ae.AutoencoderConfig(**fields)
    return str(save_autoencoder(directory, config, init_params(ae.build_autoencoder(config), 0)))


@pytest.fixture(scope="module")
def digits_vae_dir(tmp_path_factory):
    """digits_vae's architecture (16x16x1 -> 8x8x4), random weights."""
    model = digits_vae.get_config().model
    return _random_autoencoder(
        tmp_path_factory.mktemp("digits_vae"),
        in_channels=1,
        out_channels=1,
        latent_channels=model.latent_channels,
        block_out_channels=tuple(model.block_out_channels),
        layers_per_block=model.layers_per_block,
        norm_num_groups=model.norm_num_groups,
    )


@pytest.fixture(scope="module")
def sd_like_vae_dir(tmp_path_factory):
    """Stable Diffusion's VAE layout (factor 8, 4 latent channels) at width 8: compiles fast."""
    return _random_autoencoder(
        tmp_path_factory.mktemp("sd_vae"), block_out_channels=(8, 8, 8, 8), norm_num_groups=4
    )


@pytest.mark.slow
@pytest.mark.parametrize("module,mesh", DIGITS_CASES)
def test_digits_configs_take_sharded_steps(module, mesh, digits_vae_dir):
    config = module.get_config()
    config.batch_size = 16
    if module is digits_latent:
        config.autoencoder.path = digits_vae_dir
    config.mesh.data, config.mesh.fsdp = MESHES[mesh]
    experiment = build_experiment(config)
    state, shardings = loop.create_state(experiment, seed=0)
    step = loop.make_train_step(experiment, shardings)
    batch = sharding.host_batch_to_global(_host_batch(experiment, 16), experiment.mesh)
    for _ in range(2):
        state, metrics = step(state, batch, experiment.frozen)
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
    if mesh == "fsdp":
        specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)}
        assert any("fsdp" in spec for spec in specs)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from tests.models.text_encoders import checkpoints

    return checkpoints.clip_checkpoint(tmp_path_factory.mktemp("clip"))[0]


@pytest.mark.slow
@pytest.mark.parametrize("module,mesh", CIFAR_CASES)
def test_cifar_configs_compile_their_sharded_step(module, mesh, clip_dir, sd_like_vae_dir):
    config = module.get_config()
    config.batch_size = 8
    config.mesh.data, config.mesh.fsdp = MESHES[mesh]
    if module is cifar_text:
        config.text_encoder.path = str(clip_dir)  # a small random CLIP in the HF layout
    if module is imagenet_latent_dit:
        config.autoencoder.path = sd_like_vae_dir
    experiment = build_experiment(config)
    state, shardings = loop.abstract_state(experiment)
    batch_sharding = sharding.batch_sharding(experiment.mesh)
    batch = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, jnp.asarray(a).dtype, sharding=batch_sharding),
        _host_batch(experiment, 8),
    )
    step = loop.make_train_step(experiment, shardings)
    compiled = step.lower(state, batch, experiment.frozen).compile()
    per_device = compiled.memory_analysis().argument_size_in_bytes
    total = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
    if mesh == "fsdp":
        assert per_device < total / 4  # the state really is split
    else:
        assert per_device >= total  # replicated
