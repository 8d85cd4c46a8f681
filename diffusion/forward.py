"""Forward process q(x_t | x_0) of a discrete VP schedule and its posterior.

Notation: alpha_bar = alphas_cumprod[t], so that x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar)
eps (Ho et al. 2020, eq. 4). Parameterisations of the network output live in precond.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion.schedules import NoiseSchedule


def broadcast_to(values: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes per-example values [B] so they broadcast against x [B, ...]."""
    return jnp.reshape(values, values.shape + (1,) * (x.ndim - values.ndim)).astype(x.dtype)


def alpha_bar_at(schedule: NoiseSchedule, t: jax.Array, x: jax.Array) -> jax.Array:
    """alpha-bar at integer timesteps t [B], shaped to broadcast against x."""
    return broadcast_to(schedule.alphas_cumprod[t], x)


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Draws x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar) x0, (1 - alpha_bar) I) (Ho et al. eq. 4)."""
    alpha_bar = alpha_bar_at(schedule, t, x0)
    return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def q_mean_variance(
    schedule: NoiseSchedule, x0: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of q(x_t | x_0)."""
    alpha_bar = alpha_bar_at(schedule, t, x0)
    return jnp.sqrt(alpha_bar) * x0, jnp.broadcast_to(1.0 - alpha_bar, x0.shape)


def snr(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at timesteps t."""
    alpha_bar = schedule.alphas_cumprod[t]
    return alpha_bar / (1.0 - alpha_bar)


def q_posterior_mean_variance(
    schedule: NoiseSchedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7); t >= 1."""
    alpha_bar = alpha_bar_at(schedule, t, x_t)
    alpha_bar_prev = alpha_bar_at(schedule, t - 1, x_t)
    beta = broadcast_to(schedule.betas[t], x_t)
    coef_x0 = jnp.sqrt(alpha_bar_prev) * beta / (1.0 - alpha_bar)
    coef_xt = jnp.sqrt(1.0 - beta) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    variance = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    return coef_x0 * x0 + coef_xt * x_t, variance
