"""What a model.name='autoencoder' run does besides its steps: reconstruction grids, PSNR on
images it never trained on, and the export latent diffusion reads.

The export (`<workdir>/autoencoder/`, diffusers format) carries the EMA parameters and a
scaling factor estimated as LDM does (Rombach et al. 2022, sec. 4.3.2 and appendix G): 1 / the
standard deviation of the posterior samples of the training images, so latents enter the
diffusion model at unit variance.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import full_split
from models import autoencoder as ae
from models.autoencoder_weights import save_autoencoder
from training.autoencoder_step import psnr
from training.experiment import Experiment

EXPORT_DIR = "autoencoder"
HELD_OUT_SPLIT = "held_out"


def _images(experiment: Experiment, split: str, limit: int | None = None) -> np.ndarray:
    """[N, H, W, C] images of `split` in [-1, 1] (8-bit values), at most `limit`."""
    batches = full_split.iterate_split(experiment.data, split, 512)
    images = np.concatenate(list(batches)) * 2.0 - 1.0
    return images[:limit] if limit else images


def reconstruct(config: ae.AutoencoderConfig, params, images: jax.Array) -> jax.Array:
    """Decoded posterior means of `images` (what the autoencoder keeps of them)."""
    network = ae.bind(config, params)
    mean, _ = network.encode(images)
    return jnp.clip(network.decode(mean), -1.0, 1.0)


def reconstruction_grid_fn(experiment: Experiment):
    """`fn(params, key) -> images`: sampler.num_samples held-out images, then their
    reconstructions (the loop's sample grid of an autoencoder run, two rows)."""
    config = experiment.run.model
    limit = experiment.sampler.num_samples
    shown = jnp.asarray(_images(experiment, _held_out(experiment), limit))
    jitted = jax.jit(lambda params: reconstruct(config, params, shown))

    def fn(params, key=None):
        del key
        return np.concatenate([np.asarray(shown), np.asarray(jitted(params))])

    return fn


def reconstruction_metrics_fn(experiment: Experiment):
    """`fn(params) -> {reconstruction_psnr_db, reconstruction_rmse}` on the held-out images."""
    config = experiment.run.model
    images = jnp.asarray(_images(experiment, _held_out(experiment)))

    @jax.jit
    def metrics(params):
        rebuilt = reconstruct(config, params, images)
        return {
            "reconstruction_psnr_db": jnp.mean(psnr(images, rebuilt)),
            "reconstruction_rmse": jnp.sqrt(jnp.mean(jnp.square(rebuilt - images))),
        }

    return lambda params: {k: float(v) for k, v in jax.device_get(metrics(params)).items()}


def scaling_factor(experiment: Experiment, params, seed: int = 0) -> float:
    """1 / std of posterior samples of the training split's images (LDM's estimate)."""
    config = experiment.run.model
    images = jnp.asarray(_images(experiment, experiment.data.split))

    @jax.jit
    def samples(params):
        mean, logvar = ae.bind(config, params).encode(images)
        return ae.posterior_sample(mean, logvar, jax.random.key(seed)) - config.shift_factor

    return float(1.0 / np.std(np.asarray(samples(params), np.float64)))


def export(experiment: Experiment, params, workdir: str) -> str:
    """Writes `<workdir>/autoencoder/` (diffusers format, estimated scaling factor); its path."""
    config = dataclasses.replace(
        experiment.run.model, scaling_factor=scaling_factor(experiment, params)
    )
    path = os.path.join(workdir, EXPORT_DIR)
    if jax.process_index() == 0:
        save_autoencoder(path, config, jax.device_get(params))
    return path


def _held_out(experiment: Experiment) -> str:
    """The split reconstructions are judged on: digits' held-out 20% (never trained on when the
    run trains on 'fit'); other data sets use their training split."""
    return HELD_OUT_SPLIT if experiment.data.name == "digits" else experiment.data.split
