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


# --- isotropic Gaussian mixtures in D dimensions, in the sampler's sigma view --------------------

SigmaDenoiser = Callable[[jax.Array, jax.Array], jax.Array]  # (x [..., D], sigma [...]) -> x0


def gmm_log_responsibilities(means, stds, weights, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """log p(k | x) [..., K] for x = x0 + sigma eps, x0 ~ sum_k w_k N(mu_k, std_k^2 I_D).

    Component k's marginal is N(mu_k, (std_k^2 + sigma^2) I_D); normalised by log-sum-exp, so
    far-away x and tiny variances do not underflow. Computed in x's dtype.
    """
    means, stds, weights = (jnp.asarray(np.asarray(v), x.dtype) for v in (means, stds, weights))
    var = stds**2 + jnp.asarray(sigma, x.dtype)[..., None] ** 2  # [..., K]
    squared = jnp.sum((x[..., None, :] - means) ** 2, axis=-1)  # [..., K]
    dims = x.shape[-1]
    logits = jnp.log(weights) - 0.5 * dims * jnp.log(var) - 0.5 * squared / var
    return jax.nn.log_softmax(logits, axis=-1)


def gmm_denoiser(means, stds, weights) -> SigmaDenoiser:
    """Exact E[x0 | x] for an isotropic Gaussian mixture (means [K, D], stds [K], weights [K]).

    With x = x0 + sigma eps (sigma = sqrt((1 - alpha_bar) / alpha_bar), Karras et al. 2022
    sec. 2), component k's posterior mean is mu_k + std_k^2 / (std_k^2 + sigma^2) (x - mu_k), and
    the components mix by their responsibilities (Bayes). sigma is a scalar or [...] (x.shape[:-1]).
    """
    means, stds, weights = (np.asarray(v, np.float64) for v in (means, stds, weights))

    def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
        resp = jnp.exp(gmm_log_responsibilities(means, stds, weights, x, sigma))  # [..., K]
        mu, std = jnp.asarray(means, x.dtype), jnp.asarray(stds, x.dtype)
        sigma2 = jnp.asarray(sigma, x.dtype)[..., None] ** 2
        pull = sigma2 / (std**2 + sigma2)  # [..., K]; written as x - pull (x - mu): x at sigma 0
        offset = jnp.sum((resp * pull)[..., None] * (x[..., None, :] - mu), axis=-2)  # [..., D]
        return x - offset

    return denoise


def timestep_sigma(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
    """sigma at possibly fractional t, log(sigma) interpolated linearly between training steps:
    the inverse of grids.sigma_to_timestep, which places the sigma-defined grids (karras, ...)."""
    log_sigmas = jnp.asarray(np.log(grids.train_sigmas(schedule)), jnp.float32)
    steps = jnp.arange(log_sigmas.shape[0], dtype=jnp.float32)
    return jnp.exp(jnp.interp(jnp.asarray(t, jnp.float32), steps, log_sigmas))


def sigma_view_model_fn(
    denoise: SigmaDenoiser, schedule: NoiseSchedule, prediction: str = "eps"
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A network model_fn(x_t [B, D], t [B]) of a VP schedule around a sigma-view denoiser.

    x_t = a x0 + s eps with a = 1 / sqrt(1 + sigma^2), s = sigma a, so x = x_t / a and
    eps = (x - D(x, sigma)) / sigma; sigma comes from t by `timestep_sigma`.
    """

    def model_fn(x_t, t):
        sigma = timestep_sigma(schedule, t).astype(x_t.dtype)  # [B]
        a = forward.broadcast_to(1.0 / jnp.sqrt(1.0 + sigma**2), x_t)
        x0 = denoise(x_t / a, sigma)
        s = forward.broadcast_to(sigma, x_t) * a
        eps = (x_t - a * x0) / s
        return Precond(prediction).target(x0, eps, a, s)

    return model_fn


def pf_ode_endpoint(
    denoise: SigmaDenoiser, x: jax.Array, sigma_start: float, sigma_end: float, num_steps: int
) -> np.ndarray:
    """The probability-flow ODE's endpoint x0 from x at sigma_start, in float64 on the host.

    Karras et al. 2022 eq. 3, dx/dsigma = (x - D(x, sigma)) / sigma, becomes
    dx/dlambda = D(x, e^-lambda) - x in lambda = -log(sigma) (d sigma / d lambda = -sigma).
    Classical RK4 with `num_steps` equal steps in lambda down to sigma_end (> 0), then
    D(x, sigma_end): the ODE's limit at sigma = 0 to O(sigma_end^2 / std^2).
    """
    with jax.enable_x64(True):
        x = jnp.asarray(np.asarray(x, np.float64))
        lam_start, lam_end = -np.log(sigma_start), -np.log(sigma_end)
        h = (lam_end - lam_start) / num_steps

        def velocity(x, lam):
            return denoise(x, jnp.exp(-lam)) - x

        def rk4(i, x):
            lam = lam_start + i * h
            k1 = velocity(x, lam)
            k2 = velocity(x + 0.5 * h * k1, lam + 0.5 * h)
            k3 = velocity(x + 0.5 * h * k2, lam + 0.5 * h)
            k4 = velocity(x + h * k3, lam + h)
            return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

        solve = jax.jit(lambda x: denoise(jax.lax.fori_loop(0, num_steps, rk4, x), sigma_end))
        return np.asarray(solve(x))
