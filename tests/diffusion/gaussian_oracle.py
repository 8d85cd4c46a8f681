"""Exact denoisers for Gaussian data, shared by the diffusion tests."""

import jax.numpy as jnp

from diffusion import forward
from diffusion.schedules import NoiseSchedule


def gaussian_model_fn(schedule: NoiseSchedule, mean: float, std: float, prediction: str):
    """Network output of the exact posterior for x0 ~ N(mean, std^2 I), in any parameterisation.

    With x_t = a x0 + s eps: x_t ~ N(a mean, a^2 std^2 + s^2) and
    E[eps | x_t] = s (x_t - a mean) / (a^2 std^2 + s^2).
    """

    def model_fn(x_t, t):
        alpha_bar = forward.alpha_bar_at(schedule, t, x_t)
        a, s = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
        eps = s * (x_t - a * mean) / (a**2 * std**2 + s**2)
        x0 = forward.x0_from_eps(x_t, eps, alpha_bar)
        return forward.training_target(prediction, x0, eps, alpha_bar)

    return model_fn
