"""Forward process q(x_t | x_0) and conversions between eps, x0 and v parameterisations.

Notation: alpha_bar = alphas_cumprod[t], a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar), so that
x_t = a x0 + s eps (Ho et al. 2020, eq. 4) and v = a eps - s x0 (Salimans & Ho 2022, sec. 4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion.schedules import NoiseSchedule

PREDICTIONS = ("eps", "x0", "v")


def validate_prediction(prediction: str) -> None:
    """Raises ValueError naming `diffusion.prediction` for an unknown parameterisation."""
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"diffusion.prediction={prediction!r} is not known; allowed: {', '.join(PREDICTIONS)}"
        )


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


def eps_from_x0(x_t: jax.Array, x0: jax.Array, alpha_bar: jax.Array) -> jax.Array:
    """eps = (x_t - a x0) / s."""
    return (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1.0 - alpha_bar)


def x0_from_eps(x_t: jax.Array, eps: jax.Array, alpha_bar: jax.Array) -> jax.Array:
    """x0 = (x_t - s eps) / a."""
    return (x_t - jnp.sqrt(1.0 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)


def v_from_x0_eps(x0: jax.Array, eps: jax.Array, alpha_bar: jax.Array) -> jax.Array:
    """v = a eps - s x0."""
    return jnp.sqrt(alpha_bar) * eps - jnp.sqrt(1.0 - alpha_bar) * x0


def x0_eps_from_v(
    x_t: jax.Array, v: jax.Array, alpha_bar: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """x0 = a x_t - s v and eps = s x_t + a v (a^2 + s^2 = 1)."""
    a, s = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    return a * x_t - s * v, s * x_t + a * v


def to_x0_eps(
    prediction: str, output: jax.Array, x_t: jax.Array, alpha_bar: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Turns a network output in any parameterisation into (x0, eps) estimates."""
    if prediction == "eps":
        return x0_from_eps(x_t, output, alpha_bar), output
    if prediction == "x0":
        return output, eps_from_x0(x_t, output, alpha_bar)
    if prediction == "v":
        return x0_eps_from_v(x_t, output, alpha_bar)
    validate_prediction(prediction)
    raise AssertionError("unreachable")


def training_target(
    prediction: str, x0: jax.Array, eps: jax.Array, alpha_bar: jax.Array
) -> jax.Array:
    """What the network should output for the given parameterisation."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_x0_eps(x0, eps, alpha_bar)
    validate_prediction(prediction)
    raise AssertionError("unreachable")


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
