"""One preconditioning for every parameterisation: the loss's target and the samplers' x0.

The network sees x_t = alpha x0 + s eps (VP: alpha^2 + s^2 = 1; rectified flow: alpha = 1 - t,
s = t) and outputs F, which every parameterisation here defines as a linear combination
F = A x0 + B eps with coefficients that depend on the noise level:

  eps       (Ho et al. 2020)             A = 0,                B = 1
  x0                                     A = 1,                B = 0
  v         (Salimans & Ho 2022, sec. 4) A = -s,               B = alpha
  velocity  (Lipman et al. 2023, flow)   A = -1,               B = 1      (d x_t / dt)
  edm       (Karras et al. 2022, eq. 7)  A = sigma / (sd r),   B = -sd / r
            with sigma = s / alpha, sd = sigma_data, r = sqrt(sigma^2 + sd^2)

The training target is A x0 + B eps of the true pair; a sampler recovers x0 from (x_t, F) by
solving [[alpha, s], [A, B]] [x0, eps] = [x_t, F], which is EDM's x0 = c_skip x_t + c_out F with
c_skip = B / det, c_out = -s / det, det = alpha B - s A. Nothing is written twice: both directions
come from (A, B).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

PREDICTIONS = ("eps", "x0", "v", "velocity", "edm")
# Which parameterisations each process defines. Flow sampling starts at t = 1 (alpha = 0), where
# an eps or v output does not determine x0; velocity and EDM's F are tied to their own paths.
PROCESS_PREDICTIONS = {"ddpm": ("eps", "x0", "v", "edm"), "flow": ("velocity", "x0")}


def validate_prediction(prediction: str, process: str = "ddpm") -> None:
    """Raises ValueError when `prediction` is unknown or undefined for `process`."""
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"prediction={prediction!r} is not known; allowed: {', '.join(PREDICTIONS)}"
        )
    allowed = PROCESS_PREDICTIONS.get(process, ())
    if prediction not in allowed:
        raise ValueError(
            f"prediction={prediction!r} is not defined for the {process!r} process; allowed: "
            f"{', '.join(allowed)}"
        )


@dataclasses.dataclass(frozen=True)
class Precond:
    """A parameterisation of the network output (hashable: a static argument of jitted code)."""

    prediction: str = "eps"
    sigma_data: float = 0.5  # EDM's data standard deviation (prediction "edm" only)

    def coefficients(self, alpha: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(A, B) with F = A x0 + B eps at the noise level (alpha, s)."""
        one, zero = jnp.ones_like(alpha), jnp.zeros_like(alpha)
        if self.prediction == "eps":
            return zero, one
        if self.prediction == "x0":
            return one, zero
        if self.prediction == "v":
            return -s, alpha
        if self.prediction == "velocity":
            return -one, one
        if self.prediction == "edm":
            # sigma / (sd r) and -sd / r, multiplied through by alpha (no division by alpha).
            q = jnp.sqrt(s**2 + (alpha * self.sigma_data) ** 2)
            return s / (self.sigma_data * q), -self.sigma_data * alpha / q
        raise ValueError(f"prediction={self.prediction!r} is not known; allowed: {PREDICTIONS}")

    def target(self, x0: jax.Array, noise: jax.Array, alpha: jax.Array, s: jax.Array) -> jax.Array:
        """What the network should output for the pair (x0, noise): A x0 + B eps."""
        a_coef, b_coef = self.coefficients(alpha, s)
        if self.prediction == "eps":  # exact, whatever x0 holds
            return noise
        if self.prediction == "x0":
            return x0
        return a_coef * x0 + b_coef * noise

    def skip_out(self, alpha: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(c_skip, c_out) with x0 = c_skip x_t + c_out F."""
        a_coef, b_coef = self.coefficients(alpha, s)
        det = alpha * b_coef - s * a_coef
        return b_coef / det, -s / det

    def x0(self, output: jax.Array, x_t: jax.Array, alpha: jax.Array, s: jax.Array) -> jax.Array:
        """The x0 estimate implied by the network output at x_t."""
        if self.prediction == "eps":  # (x_t - s eps) / alpha, as Ho et al. write it
            return (x_t - s * output) / alpha
        if self.prediction == "x0":
            return output
        c_skip, c_out = self.skip_out(alpha, s)
        return c_skip * x_t + c_out * output

    def input_scale(self, alpha: jax.Array, s: jax.Array) -> jax.Array:
        """Factor on x_t before the network: 1, except EDM's c_in = 1 / sqrt(sigma^2 + sd^2) in
        the sigma view x = x_t / alpha, i.e. 1 / sqrt(s^2 + (alpha sd)^2) on x_t (1 at sd = 1)."""
        if self.prediction == "edm":
            return 1.0 / jnp.sqrt(s**2 + (alpha * self.sigma_data) ** 2)
        return jnp.ones_like(alpha)

    def output_per_x0_error(self, alpha: jax.Array, s: jax.Array) -> jax.Array:
        """(det / s)^2: squared output error per unit of squared x0 error. An x0-space loss
        weight w becomes w / (det / s)^2 on the network's output MSE."""
        a_coef, b_coef = self.coefficients(alpha, s)
        return ((alpha * b_coef - s * a_coef) / s) ** 2


EPS = Precond()  # Ho et al.'s parameterisation, the default
