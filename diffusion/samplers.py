"""Reverse-process samplers, each a step function driven by one `lax.scan` over timesteps.

The network is seen only as `model_fn(x_t, t) -> output` in the parameterisation it was trained
with; every step converts the output to (x0, eps) estimates first, so all samplers work with eps,
x0 and v models alike.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import forward
from diffusion.schedules import NoiseSchedule

SAMPLERS = ("ddpm", "ddim")
SPACINGS = ("leading", "trailing", "linspace")

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def validate_sampler(
    name: str, num_steps: int, num_timesteps: int, spacing: str = "leading"
) -> None:
    """Raises ValueError naming the `sampler.*` field when a sampler option is invalid."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler.name={name!r} is not known; allowed: {', '.join(SAMPLERS)}")
    if not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"sampler.num_steps={num_steps!r} must be an integer in [1, {num_timesteps}] "
            "(diffusion.num_timesteps)"
        )
    if spacing not in SPACINGS:
        raise ValueError(
            f"sampler.spacing={spacing!r} is not known; allowed: {', '.join(SPACINGS)}"
        )


def timesteps(num_timesteps: int, num_steps: int, spacing: str = "leading") -> np.ndarray:
    """Decreasing integer timesteps to visit, following the spacings of Lin et al. 2024, table 2."""
    if spacing == "leading":
        steps = np.arange(num_steps) * (num_timesteps // num_steps)
    elif spacing == "trailing":
        steps = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)) - 1
    elif spacing == "linspace":
        steps = np.round(np.linspace(0, num_timesteps - 1, num_steps))
    else:
        raise ValueError(
            f"sampler.spacing={spacing!r} is not known; allowed: {', '.join(SPACINGS)}"
        )
    return np.sort(steps.astype(np.int32))[::-1].copy()


def _alpha_bar_or_one(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
    """alpha-bar at t, with alpha-bar = 1 at t = -1 (the clean end of the chain)."""
    return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], 1.0)


def ddim_step(
    x0: jax.Array,
    eps: jax.Array,
    alpha_bar_prev: jax.Array,
    sigma: jax.Array,
    noise: jax.Array,
) -> jax.Array:
    """Song et al. 2021 eq. 12: x_prev = a_prev x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z."""
    direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps
    return jnp.sqrt(alpha_bar_prev) * x0 + direction + sigma * noise


def ddim_sigma(alpha_bar: jax.Array, alpha_bar_prev: jax.Array, eta: jax.Array) -> jax.Array:
    """Song et al. 2021 eq. 16: eta = 1 is the DDPM posterior std, eta = 0 is deterministic."""
    return (
        eta
        * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar))
        * jnp.sqrt(1.0 - alpha_bar / alpha_bar_prev)
    )


def sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,
    key: jax.Array,
    *,
    sampler: str = "ddim",
    num_steps: int = 50,
    prediction: str = "eps",
    eta: float | jax.Array = 0.0,
    spacing: str = "leading",
    clip_x0: bool = False,
    return_trajectory: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Runs the reverse chain from x_T ~ N(0, I) to x_0 as one `lax.scan`.

    `ddpm` is ancestral sampling from the posterior q(x_{t-1} | x_t, x0_hat) (Ho et al. 2020,
    Algorithm 2, with the posterior variance); with fewer than T steps it uses the posterior between
    the visited timesteps, which is DDIM with eta = 1. `ddim` uses eq. 12 of Song et al. 2021.
    Returns x_0, and with `return_trajectory` also the states after each step [num_steps, ...].
    """
    validate_sampler(sampler, num_steps, schedule.num_timesteps, spacing)
    forward.validate_prediction(prediction)
    steps = timesteps(schedule.num_timesteps, num_steps, spacing)
    prev_steps = np.append(steps[1:], -1).astype(np.int32)
    eta = jnp.asarray(1.0 if sampler == "ddpm" else eta, jnp.float32)
    batch = x_T.shape[0]

    def step(x, inputs):
        index, t, t_prev = inputs
        alpha_bar = _alpha_bar_or_one(schedule, t)
        alpha_bar_prev = _alpha_bar_or_one(schedule, t_prev)
        output = model_fn(x, jnp.full((batch,), t, jnp.int32))
        x0, eps = forward.to_x0_eps(prediction, output.astype(x.dtype), x, alpha_bar)
        if clip_x0:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = forward.eps_from_x0(x, x0, alpha_bar)
        sigma = ddim_sigma(alpha_bar, alpha_bar_prev, eta)
        noise = jax.random.normal(jax.random.fold_in(key, index), x.shape, x.dtype)
        x = ddim_step(x0, eps, alpha_bar_prev, sigma, noise)
        return x, (x if return_trajectory else None)

    xs = (jnp.arange(num_steps, dtype=jnp.int32), jnp.asarray(steps), jnp.asarray(prev_steps))
    x_0, trajectory = jax.lax.scan(step, x_T, xs)
    return (x_0, trajectory) if return_trajectory else x_0
