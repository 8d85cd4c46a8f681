"""Loss weightings over noise levels, each written as its paper defines it.

Every weighting except `uniform` is defined on the x0-space error ||x0 - x0_hat||^2 (or, for P2,
on the eps error, converted here to x0 space: ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2). The
loss multiplies the network's output MSE by w_x0 / (det / s)^2 (`Precond.output_per_x0_error`),
which is the same objective in the network's own parameterisation.

  uniform       1 on the output MSE (Ho et al. 2020's L_simple for eps)
  min_snr       min(SNR, gamma)                      Hang et al. 2023, eq. 9 ("Min-SNR-gamma")
  soft_min_snr  SNR gamma / (SNR + gamma)            Crowson et al. 2024 (HDiT), sec. 4: the
                harmonic soft minimum of SNR and gamma; k-diffusion's form at gamma = 1 / sd^2
  edm           (sigma^2 + sd^2) / (sigma sd)^2      Karras et al. 2022, eq. 8 / table 1,
                sigma = 1 / sqrt(SNR)
  p2            SNR / (k + SNR)^gamma                Choi et al. 2022, eq. 8 (1 / (k + SNR)^gamma
                on the eps loss)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

WEIGHTINGS = ("uniform", "min_snr", "soft_min_snr", "edm", "p2")
# The parameterisations each paper's weighting is defined for (VP processes only; flow models
# are weighted through their time sampling, as SD3 does).
DEFINED_FOR = {
    "uniform": ("eps", "x0", "v", "velocity", "edm"),
    "min_snr": ("eps", "x0", "v"),
    "soft_min_snr": ("eps", "x0", "v", "edm"),
    "edm": ("eps", "x0", "v", "edm"),
    "p2": ("eps",),
}


@dataclasses.dataclass(frozen=True)
class Weighting:
    """A loss weighting and its constants (hashable: static in the jitted step)."""

    name: str = "uniform"
    snr_gamma: float = 5.0  # gamma of min_snr / soft_min_snr (Hang et al.: 5)
    sigma_data: float = 0.5  # EDM's sd
    p2_k: float = 1.0  # P2's k
    p2_gamma: float = 1.0  # P2's gamma (0: uniform)


UNIFORM = Weighting()


def validate_weighting(weighting: Weighting, prediction: str, process: str) -> None:
    """Raises ValueError where the weighting's paper does not define it."""
    if weighting.name not in WEIGHTINGS:
        raise ValueError(
            f"loss_weighting={weighting.name!r} is not known; allowed: {', '.join(WEIGHTINGS)}"
        )
    allowed = DEFINED_FOR[weighting.name]
    if process == "flow" and weighting.name != "uniform":
        raise ValueError(
            f"loss_weighting={weighting.name!r} is defined for VP diffusion, not the flow "
            "process; allowed: uniform (weight flow models through t_sampling)"
        )
    if prediction not in allowed:
        raise ValueError(
            f"loss_weighting={weighting.name!r} is not defined for prediction={prediction!r}; "
            f"allowed predictions: {', '.join(allowed)}"
        )
    for name in ("snr_gamma", "sigma_data", "p2_k"):
        if not getattr(weighting, name) > 0:
            raise ValueError(f"{name}={getattr(weighting, name)} must be > 0.")
    if not weighting.p2_gamma >= 0:
        raise ValueError(f"p2_gamma={weighting.p2_gamma} must be >= 0.")


def x0_weight(weighting: Weighting, snr: jax.Array) -> jax.Array:
    """The weight on the x0-space squared error at signal-to-noise ratio `snr` (not uniform)."""
    if weighting.name == "min_snr":
        return jnp.minimum(snr, weighting.snr_gamma)
    if weighting.name == "soft_min_snr":
        return snr * weighting.snr_gamma / (snr + weighting.snr_gamma)
    if weighting.name == "edm":
        sigma_sq, sd_sq = 1.0 / snr, weighting.sigma_data**2
        return (sigma_sq + sd_sq) / (sigma_sq * sd_sq)
    if weighting.name == "p2":
        return snr / (weighting.p2_k + snr) ** weighting.p2_gamma
    raise ValueError(f"loss_weighting={weighting.name!r} has no x0-space weight")


def output_weight(
    weighting: Weighting, snr: jax.Array, output_per_x0_error: jax.Array
) -> jax.Array:
    """The weight on the network's output MSE [B]."""
    if weighting.name == "uniform":
        return jnp.ones_like(snr)
    return x0_weight(weighting, snr) / output_per_x0_error
