"""Discrete noise schedules: betas and cumulative alphas for T noise levels."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine", "scaled_linear")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """Variance schedule of the forward process; index t = 0..T-1 is the paper's step t+1."""

    betas: jax.Array  # [T]
    alphas_cumprod: jax.Array  # [T], alpha-bar_t = prod_{s<=t} (1 - beta_s)

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def sigmas(self) -> jax.Array:
        """Noise-to-signal ratio sqrt((1 - alpha-bar) / alpha-bar) (Karras et al. 2022's sigma)."""
        return jnp.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Ho et al. 2020: betas evenly spaced from beta_start to beta_end."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Latent Diffusion / Stable Diffusion: sqrt(beta) evenly spaced, then squared."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021, eq. 17: alpha-bar(t) = f(t)/f(0), f(t) = cos^2(((t/T)+s)/(1+s) pi/2).

    Betas come from ratios of consecutive alpha-bars and are clipped at `max_beta` (their eq. 17
    discussion) to avoid the singularity at t = T.
    """
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return np.clip(betas, 0.0, max_beta)


def validate_schedule_args(
    name: str, num_timesteps: int, beta_start: float, beta_end: float
) -> None:
    """Raises ValueError when a schedule argument is invalid."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is not known; allowed: {', '.join(SCHEDULES)}")
    if not isinstance(num_timesteps, int) or num_timesteps < 2:
        raise ValueError(f"num_timesteps={num_timesteps!r} must be an integer >= 2")
    if name != "cosine" and not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(
            f"beta_start={beta_start!r}, beta_end={beta_end!r}: need 0 < beta_start < beta_end < 1"
        )


def make_schedule(
    name: str, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
    """Builds a schedule by name; computed in float64 on host, stored as float32."""
    validate_schedule_args(name, num_timesteps, beta_start, beta_end)
    if name == "linear":
        betas = linear_betas(num_timesteps, beta_start, beta_end)
    elif name == "scaled_linear":
        betas = scaled_linear_betas(num_timesteps, beta_start, beta_end)
    else:
        betas = cosine_betas(num_timesteps)
    alphas_cumprod = np.cumprod(1.0 - betas)
    return NoiseSchedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
    )
