"""The denoising loss of every process and parameterisation (Ho et al. 2020, Algorithm 1;
Lipman et al. 2023, eq. 23), with the field's loss weightings and noise-level distributions."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion import forward, processes, weighting
from diffusion import precond as precond_lib
from diffusion.precond import Precond
from diffusion.processes import NoiseLevels, TimeSampling
from diffusion.schedules import NoiseSchedule
from diffusion.weighting import Weighting

# (x_t [B, H, W, C], timestep [B]) -> network output shaped like x_t
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
Draws = tuple[NoiseLevels, jax.Array]  # noise levels [B] and eps ~ N(0, I) shaped like x0


def draw_noise(
    key: jax.Array,
    x0: jax.Array,
    schedule: NoiseSchedule | None,
    process: str = "ddpm",
    sampling: TimeSampling = processes.UNIFORM,
) -> Draws:
    """The loss's random draws for a batch: noise levels [B] and eps ~ N(0, I) like x0."""
    level_key, noise_key = jax.random.split(key)
    levels = processes.draw_levels(level_key, x0.shape[0], process, schedule, sampling)
    return levels, jax.random.normal(noise_key, x0.shape, x0.dtype)


def diffusion_loss(
    model_fn: ModelFn,
    x0: jax.Array,
    draws: Draws,
    precond: Precond = precond_lib.EPS,
    loss_weighting: Weighting = weighting.UNIFORM,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted MSE between the network output and the precond's target.

    `draws` come from `draw_noise` (gradient accumulation draws for the whole batch once and
    hands each micro-batch its slice). Returns the scalar loss (mean over the batch of each
    example's weighted pixel mean; plain MSE for `uniform`) and metrics.
    """
    levels, noise = draws
    alpha, s = (forward.broadcast_to(v, x0) for v in (levels.alpha, levels.s))
    x_t = alpha * x0 + s * noise
    target = precond.target(x0, noise, alpha, s)
    with jax.named_scope("model"):
        output = model_fn(x_t * precond.input_scale(alpha, s), levels.timestep)
    with jax.named_scope("loss"):
        squared = jnp.square(output.astype(jnp.float32) - target)
        if loss_weighting.name == "uniform":
            loss = jnp.mean(squared)
            return loss, {"loss": loss}
        per_example = jnp.mean(squared, axis=tuple(range(1, x0.ndim)))
        weights = weighting.output_weight(
            loss_weighting,
            processes.snr(levels.alpha, levels.s),
            precond.output_per_x0_error(levels.alpha, levels.s),
        )
        loss = jnp.mean(weights * per_example)
    return loss, {"loss": loss, "unweighted_loss": jnp.mean(per_example)}
