"""Exact denoisers for Gaussian and Gaussian-mixture data: ground truth for testing samplers."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import forward, grids
from diffusion.precond import Precond
from diffusion.schedules import NoiseSchedule


def alpha_bar_at_time(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
    """alpha_bar at possibly fractional t, with sigma interpolated linearly (as the grids do)."""
    sigmas = jnp.asarray(grids.train_sigmas(schedule), jnp.float32)
    sigma = jnp.interp(
        t.astype(jnp.float32), jnp.arange(sigmas.shape[0], dtype=jnp.float32), sigmas
    )
    return 1.0 / (1.0 + sigma**2)


def gaussian_model_fn(
    schedule: NoiseSchedule, mean: float, std: float, prediction: str
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Network output of the exact posterior for x0 ~ N(mean, std^2 I), in any parameterisation.

    With x_t = a x0 + s eps: x_t ~ N(a mean, a^2 std^2 + s^2) and
    E[eps | x_t] = s (x_t - a mean) / (a^2 std^2 + s^2).
    """

    def model_fn(x_t, t):
        alpha_bar = forward.broadcast_to(alpha_bar_at_time(schedule, t), x_t)
        a, s = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
        eps = s * (x_t - a * mean) / (a**2 * std**2 + s**2)
        x0 = (x_t - s * eps) / a
        return Precond(prediction).target(x0, eps, a, s)

    return model_fn


def mixture_model_fn(
    schedule: NoiseSchedule, means, stds, weights, prediction: str = "eps"
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Exact E[x0 | x_t] for a 1-D Gaussian mixture applied elementwise (each pixel iid)."""
    means, stds, weights = (jnp.asarray(v, jnp.float32) for v in (means, stds, weights))

    def model_fn(x_t, t):
        alpha_bar = forward.broadcast_to(alpha_bar_at_time(schedule, t), x_t)
        a, s = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
        x = x_t[..., None]
        a, s = a[..., None], s[..., None]
        var = a**2 * stds**2 + s**2  # marginal variance of component k at time t
        log_resp = jnp.log(weights) - 0.5 * jnp.log(var) - 0.5 * (x - a * means) ** 2 / var
        resp = jax.nn.softmax(log_resp, axis=-1)
        component_x0 = means + a * stds**2 * (x - a * means) / var
        x0 = jnp.sum(resp * component_x0, axis=-1)
        a, s = a[..., 0], s[..., 0]
        eps = (x_t - a * x0) / s
        return Precond(prediction).target(x0, eps, a, s)

    return model_fn


def mixture_samples(means, stds, weights, n: int, seed: int = 0) -> np.ndarray:
    """Exact draws from the 1-D mixture."""
    rng = np.random.default_rng(seed)
    component = rng.choice(len(weights), size=n, p=np.asarray(weights) / np.sum(weights))
    return np.asarray(means)[component] + np.asarray(stds)[component] * rng.standard_normal(n)
