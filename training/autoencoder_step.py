"""The loss of a KL autoencoder run (model.name='autoencoder'): reconstruction + beta * KL.

Rombach et al. 2022 (appendix G) train their autoencoders with a reconstruction term, a small
KL penalty towards N(0, I) (weight ~1e-6 against summed losses) and perceptual + adversarial
terms. No pretrained perceptual network is available offline, so this is the plain
KL-regularised recipe: the per-pixel MSE of the decoded posterior sample plus
`training.kl_weight` times the KL per latent element. The run uses the ordinary train step,
loop, checkpoints and sharding; only the loss differs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from models import autoencoder as ae


def autoencoder_loss(
    params,
    inputs: dict,
    dropout_key: jax.Array,
    *,
    config: ae.AutoencoderConfig,
    kl_weight: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of a (micro-)batch {image}: MSE + kl_weight * KL per latent element.

    The autoencoder has no dropout: its step key draws the posterior sample instead."""
    images = inputs["image"]
    network = ae.bind(config, params)
    with jax.named_scope("autoencoder_loss"):
        mean, logvar = network.encode(images)
        reconstruction = network.decode(ae.posterior_sample(mean, logvar, dropout_key))
        mse = jnp.mean(jnp.square(reconstruction - images))
        kl = jnp.mean(ae.kl_divergence(mean, logvar)) / math.prod(mean.shape[1:])
        loss = mse + kl_weight * kl
    return loss, {"loss": loss, "reconstruction_mse": mse, "kl_per_element": kl}


def psnr(images: jax.Array, reconstructions: jax.Array) -> jax.Array:
    """Peak signal-to-noise ratio in dB of [-1, 1] images (peak-to-peak range 2): [B]."""
    mse = jnp.mean(jnp.square(reconstructions - images), axis=tuple(range(1, images.ndim)))
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))
