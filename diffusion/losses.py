"""Noise-prediction training loss (Ho et al. 2020, Algorithm 1) for eps, x0 or v targets."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion import forward
from diffusion.schedules import NoiseSchedule

# (x_t [B,H,W,C], t [B] int32) -> network output shaped like x_t
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def sample_timesteps(key: jax.Array, batch_size: int, num_timesteps: int) -> jax.Array:
    """t ~ Uniform{0, ..., T-1}, one per example."""
    return jax.random.randint(key, (batch_size,), 0, num_timesteps, dtype=jnp.int32)


def draw_noise(key: jax.Array, x0: jax.Array, num_timesteps: int) -> tuple[jax.Array, jax.Array]:
    """The loss's random draws for a batch: t [B] ~ U{0, ..., T-1} and eps ~ N(0, I) like x0."""
    t_key, noise_key = jax.random.split(key)
    t = sample_timesteps(t_key, x0.shape[0], num_timesteps)
    return t, jax.random.normal(noise_key, x0.shape, x0.dtype)


def noise_prediction_loss(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x0: jax.Array,
    key: jax.Array | None,
    prediction: str = "eps",
    *,
    draws: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Plain MSE between the network output and its target at a random noise level.

    `draws` = (t, noise) replaces `draw_noise(key, ...)`: gradient accumulation draws for the
    whole batch once and hands each micro-batch its slice (`key` is then unused).
    Returns the scalar loss (mean over the batch and all pixels) and metrics.
    """
    t, noise = draw_noise(key, x0, schedule.num_timesteps) if draws is None else draws
    x_t = forward.q_sample(schedule, x0, t, noise)
    target = forward.training_target(prediction, x0, noise, forward.alpha_bar_at(schedule, t, x0))
    with jax.named_scope("model"):
        output = model_fn(x_t, t)
    with jax.named_scope("loss"):
        loss = jnp.mean(jnp.square(output.astype(jnp.float32) - target))
    return loss, {"loss": loss}
