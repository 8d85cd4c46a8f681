"""The two forward processes and their noise levels: discrete VP (DDPM) and rectified flow.

A noise level is (alpha, s) with x_t = alpha x0 + s eps, plus the timestep the network is told.
VP: alpha = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t), timestep t in [0, T) (fractional
between training steps). Flow (Liu et al. 2023; Esser et al. 2024): alpha = 1 - t, s = t, the
network told 1000 t as SD3 does.

Samplers integrate in a per-process state view with a scalar level sigma:
  VP:   state x = x_t / alpha = x0 + sigma eps, sigma = s / alpha (Karras et al. 2022, sec. 2);
  flow: state x = x_t, sigma = t (finite at t = 1, where alpha = 0).
In both, (x - D(x)) / sigma is the ODE's derivative, so Euler and Heun serve both processes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.schedules import NoiseSchedule

PROCESSES = ("ddpm", "flow")
T_SAMPLINGS = ("uniform", "logit_normal", "lognormal_sigma")
FLOW_TIME_SCALE = 1000.0  # the network's timestep for flow time t is 1000 t (SD3)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoiseLevels:
    """Per-example noise levels [B]."""

    timestep: jax.Array  # what the network is told
    alpha: jax.Array  # signal scale of x_t
    s: jax.Array  # noise scale of x_t


@dataclasses.dataclass(frozen=True)
class TimeSampling:
    """How training draws noise levels (hashable: static in the jitted step).

    uniform: VP t ~ U{0..T-1}, flow t ~ U(0, 1). logit_normal (Esser et al. 2024, sec. 3.1):
    u = sigmoid(N(mean, std)) as flow time, or t = floor(u T) for VP. lognormal_sigma (Karras et
    al. 2022, sec. 5 "P_mean, P_std"): ln sigma ~ N(mean, std), clipped to the schedule's range
    for VP, and flow time t = sigma / (1 + sigma).
    """

    kind: str = "uniform"
    mean: float = 0.0
    std: float = 1.0


UNIFORM = TimeSampling()


def validate_time_sampling(sampling: TimeSampling) -> None:
    """Raises ValueError for an unknown kind or a non-positive spread."""
    if sampling.kind not in T_SAMPLINGS:
        raise ValueError(f"t_sampling={sampling.kind!r} is not known; allowed: {T_SAMPLINGS}")
    if not sampling.std > 0:
        raise ValueError(f"the {sampling.kind} spread std={sampling.std} must be > 0.")


def vp_levels(schedule: NoiseSchedule, t: jax.Array) -> NoiseLevels:
    """Levels at integer training timesteps t [B]."""
    alpha_bar = schedule.alphas_cumprod[t]
    return NoiseLevels(t, jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar))


def vp_levels_from_sigma(schedule: NoiseSchedule, sigma: jax.Array) -> NoiseLevels:
    """Levels at continuous sigmas, with the fractional timestep whose log-sigma interpolates
    linearly to log(sigma) (what the samplers' grids do between training steps)."""
    log_sigmas = jnp.log(schedule.sigmas)
    index = jnp.arange(log_sigmas.shape[0], dtype=jnp.float32)
    timestep = jnp.interp(jnp.log(sigma), log_sigmas, index)
    alpha = 1.0 / jnp.sqrt(1.0 + sigma**2)
    return NoiseLevels(timestep, alpha, sigma * alpha)


def flow_levels(t: jax.Array) -> NoiseLevels:
    """Levels at flow times t in [0, 1]."""
    return NoiseLevels(t * FLOW_TIME_SCALE, 1.0 - t, t)


def draw_levels(
    key: jax.Array,
    batch_size: int,
    process: str,
    schedule: NoiseSchedule | None,
    sampling: TimeSampling = UNIFORM,
) -> NoiseLevels:
    """Noise levels for a training batch."""
    validate_time_sampling(sampling)
    shape = (batch_size,)
    if sampling.kind == "lognormal_sigma":
        sigma = jnp.exp(sampling.mean + sampling.std * jax.random.normal(key, shape))
        if process == "flow":
            return flow_levels(sigma / (1.0 + sigma))
        sigma = jnp.clip(sigma, schedule.sigmas[0], schedule.sigmas[-1])
        return vp_levels_from_sigma(schedule, sigma)
    if sampling.kind == "logit_normal":
        u = jax.nn.sigmoid(sampling.mean + sampling.std * jax.random.normal(key, shape))
    elif process == "flow":
        u = jax.random.uniform(key, shape)
    else:
        t = jax.random.randint(key, shape, 0, schedule.num_timesteps, dtype=jnp.int32)
        return vp_levels(schedule, t)
    if process == "flow":
        return flow_levels(u)
    t = jnp.minimum(jnp.floor(u * schedule.num_timesteps), schedule.num_timesteps - 1)
    return vp_levels(schedule, t.astype(jnp.int32))


def view_levels(process: str, sigma: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(alpha, s, model scale) at the sampler's level sigma; x_t = model scale * state."""
    if process == "flow":
        return 1.0 - sigma, sigma, jnp.ones_like(sigma)
    alpha = 1.0 / jnp.sqrt(1.0 + sigma**2)
    return alpha, sigma * alpha, alpha


def snr(alpha: jax.Array, s: jax.Array) -> jax.Array:
    """Signal-to-noise ratio alpha^2 / s^2 (Kingma et al. 2021)."""
    return (alpha / s) ** 2


def flow_times(num_steps: int, shift: float = 1.0) -> np.ndarray:
    """Flow times from 1 to 0 (n + 1 values) with the shift of Esser et al. 2024 (SD3):
    t' = shift t / (1 + (shift - 1) t) spends more steps at high noise when shift > 1."""
    t = np.linspace(1.0, 0.0, num_steps + 1)
    return shift * t / (1.0 + (shift - 1.0) * t)
