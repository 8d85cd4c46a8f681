"""Reverse-process samplers: one small step function per method, one `lax.scan` driver.

All samplers of a VP model (DDPM-style alphas_cumprod) run in the sigma ("VE") view of Karras et
al. 2022: x = x_t / sqrt(alpha_bar) = x0 + sigma eps with sigma = sqrt((1 - alpha_bar) / alpha_bar).
The network is only seen through a denoiser D(x, sigma, t) -> x0 estimate, built from a model
function in any parameterisation (eps, x0 or v), so every sampler works with every model. The
driver scans over a padded grid (see grids.py): different step counts reuse one compile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffusion import forward, grids, guidance
from diffusion.grids import Grid
from diffusion.schedules import NoiseSchedule

Denoiser = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (x, sigma, t) -> x0
State = dict[str, jax.Array]
Step = dict[str, jax.Array]  # one row of the grid plus its index


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Samples x_0, optional per-step states x_t [S, ...] (VP scale) and network evaluations."""

    samples: jax.Array
    trajectory: jax.Array | None
    nfe: jax.Array  # int32 scalar: calls of the (possibly CFG-batched) network


# --- first-order steps -----------------------------------------------------------------------


def ddim_step(denoise: Denoiser, x, state: State, g: Step, noise, eta) -> tuple[jax.Array, State]:
    """Song et al. 2021 eq. 12 with sigma_t(eta) of eq. 16; eta = 1 is DDPM's ancestral step."""
    x0 = denoise(x, g["sigma"], g["t"])
    eps = (x - x0) / g["sigma"]
    alpha_bar, alpha_bar_next = 1.0 / (1.0 + g["sigma"] ** 2), 1.0 / (1.0 + g["sigma_next"] ** 2)
    std = ddim_sigma(alpha_bar, alpha_bar_next, eta)
    direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_next - std**2, 0.0))
    # x_{t-1} in VP scale divided by sqrt(alpha_bar_next) gives the next sigma-scale state.
    x_next = x0 + (direction * eps + std * noise) / jnp.sqrt(alpha_bar_next)
    return x_next, state


def ddim_sigma(alpha_bar: jax.Array, alpha_bar_prev: jax.Array, eta: jax.Array) -> jax.Array:
    """Song et al. 2021 eq. 16: the std of the noise added in a DDIM step."""
    return (
        eta
        * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar))
        * jnp.sqrt(jnp.maximum(1.0 - alpha_bar / alpha_bar_prev, 0.0))
    )


def euler_step(denoise: Denoiser, x, state: State, g: Step, noise, eta) -> tuple[jax.Array, State]:
    """Euler on the probability-flow ODE dx/dsigma = (x - D(x)) / sigma (Karras et al. eq. 3)."""
    derivative = (x - denoise(x, g["sigma"], g["t"])) / g["sigma"]
    return x + derivative * (g["sigma_next"] - g["sigma"]), state


def euler_ancestral_step(
    denoise: Denoiser, x, state: State, g: Step, noise, eta
) -> tuple[jax.Array, State]:
    """Euler down to sigma_down, then fresh noise of std sigma_up (k-diffusion's ancestral step)."""
    sigma, sigma_next = g["sigma"], g["sigma_next"]
    sigma_up = jnp.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    sigma_down = jnp.sqrt(sigma_next**2 - sigma_up**2)
    derivative = (x - denoise(x, sigma, g["t"])) / sigma
    return x + derivative * (sigma_down - sigma) + sigma_up * noise, state


# --- second order and multistep ----------------------------------------------------------------


def heun_step(denoise: Denoiser, x, state: State, g: Step, noise, eta) -> tuple[jax.Array, State]:
    """Karras et al. 2022 Algorithm 1: Euler predictor, trapezoid corrector (none onto sigma 0)."""
    sigma, sigma_next = g["sigma"], g["sigma_next"]
    derivative = (x - denoise(x, sigma, g["t"])) / sigma
    x_euler = x + derivative * (sigma_next - sigma)

    def correct(x_euler):
        derivative_next = (x_euler - denoise(x_euler, sigma_next, g["t_next"])) / sigma_next
        return x + 0.5 * (derivative + derivative_next) * (sigma_next - sigma)

    return jax.lax.cond(sigma_next > 0, correct, lambda x_e: x_e, x_euler), state


def lms_step(denoise: Denoiser, x, state: State, g: Step, noise, eta) -> tuple[jax.Array, State]:
    """Linear multistep: sum of past derivatives weighted by integrated Lagrange polynomials."""
    derivative = (x - denoise(x, g["sigma"], g["t"])) / g["sigma"]
    history = jnp.concatenate([derivative[None], state["derivatives"][:-1]], axis=0)
    coeffs = g["lms_coeffs"].reshape((-1,) + (1,) * x.ndim)
    return x + jnp.sum(coeffs * history, axis=0), {"derivatives": history}


def _half_log_snr(sigma: jax.Array) -> jax.Array:
    """lambda = log(alpha / sigma_VP) = -log(sigma); +inf at sigma = 0."""
    return -jnp.log(sigma)


def _safe_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator where the denominator is finite and nonzero, else 1."""
    ok = jnp.isfinite(denominator) & (denominator != 0)
    return jnp.where(ok, numerator / jnp.where(ok, denominator, 1.0), 1.0)


def _dpm_multistep_x0(
    denoise: Denoiser, x, state: State, g: Step
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x0, h, d) of a 2M step: d = x0 + (x0 - x0_prev) / (2 r) with r = h_prev / h (midpoint
    form, Lu et al. 2022), falling back to x0 on the first and the final step."""
    sigma, sigma_next = g["sigma"], g["sigma_next"]
    x0 = denoise(x, sigma, g["t"])
    h = _half_log_snr(sigma_next) - _half_log_snr(sigma)
    r = _safe_ratio(state["h"], h)
    second_order = (g["index"] > 0) & (g["steps_left"] > 1)
    d = jnp.where(second_order, x0 + (x0 - state["x0"]) / (2.0 * r), x0)
    return x0, h, d


def dpmpp_2m_step(
    denoise: Denoiser, x, state: State, g: Step, noise, eta
) -> tuple[jax.Array, State]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in the sigma view; first order at the ends."""
    x0, h, d = _dpm_multistep_x0(denoise, x, state, g)
    x_next = (g["sigma_next"] / g["sigma"]) * x - jnp.expm1(-h) * d
    return x_next, {"x0": x0, "h": h}


def dpmpp_2m_sde_step(
    denoise: Denoiser, x, state: State, g: Step, noise, eta
) -> tuple[jax.Array, State]:
    """SDE variant of DPM-Solver++(2M) (Lu et al. 2022, appendix; midpoint form)."""
    x0, h, d = _dpm_multistep_x0(denoise, x, state, g)
    one_minus = -jnp.expm1(-2.0 * h)  # 1 - exp(-2h)
    x_next = (g["sigma_next"] / g["sigma"]) * jnp.exp(-h) * x + one_minus * d
    x_next = x_next + g["sigma_next"] * jnp.sqrt(one_minus) * noise
    return x_next, {"x0": x0, "h": h}


def _unipc_b(h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """B(h) = e^{-h} - 1 (the bh2 choice) and the first two right-hand sides b_1, b_2 of the UniC
    order conditions (Zhao et al. 2023, eq. 8 / Algorithm 3, data-prediction form)."""
    hh = -h
    phi_1 = jnp.expm1(hh)
    b_1 = (phi_1 / hh - 1.0) / phi_1
    b_2 = ((phi_1 / hh - 1.0) / hh - 0.5) * 2.0 / phi_1
    return phi_1, b_1, b_2


def unipc_step(denoise: Denoiser, x, state: State, g: Step, noise, eta) -> tuple[jax.Array, State]:
    """UniPC-bh2 of order 2 (Zhao et al. 2023): UniC corrects x_i with the new x0, UniP predicts.

    The corrector reuses the evaluation the predictor needs anyway, so one NFE per step.
    """
    sigma, sigma_next, index = g["sigma"], g["sigma_next"], g["index"]
    x0 = denoise(x, sigma, g["t"])
    lam = _half_log_snr(sigma)

    # UniC: redo the previous step from x_last with the x0 just computed at its end point.
    h = lam - state["lam1"]
    phi_1, b_1, b_2 = _unipc_b(jnp.where(index > 0, h, 1.0))
    r_1 = _safe_ratio(state["lam2"] - state["lam1"], h)
    rho_a = _safe_ratio(b_1 - b_2, 1.0 - r_1)  # solves [[1, 1], [r_1, 1]] rho = [b_1, b_2]
    rho_b = b_1 - rho_a
    change = x0 - state["m1"]
    second = rho_a * (state["m2"] - state["m1"]) / r_1 + rho_b * change
    correction = jnp.where(state["order"] == 2, second, 0.5 * change)
    corrected = (sigma / state["sigma1"]) * state["x_last"] - phi_1 * state["m1"]
    corrected = corrected - phi_1 * correction
    x = jnp.where(index > 0, corrected, x)

    # UniP: order 2 when one older x0 exists and this is not the last step.
    order = jnp.minimum(jnp.minimum(2, g["steps_left"]), index + 1)
    h = _half_log_snr(sigma_next) - lam
    phi_1 = jnp.expm1(-h)
    r_1 = _safe_ratio(state["lam1"] - lam, h)
    d_1 = (state["m1"] - x0) / r_1
    x_next = (sigma_next / sigma) * x - phi_1 * x0
    x_next = jnp.where(order == 2, x_next - phi_1 * 0.5 * d_1, x_next)
    new_state = {
        "x_last": x,
        "m1": x0,
        "m2": state["m1"],
        "lam1": lam,
        "lam2": state["lam1"],
        "sigma1": sigma,
        "order": order,
    }
    return x_next, new_state


def _initial_state(sampler: str, x: jax.Array) -> State:
    """The multistep history each sampler carries through the scan (zeros before step 0)."""
    zero = jnp.zeros((), x.dtype)
    if sampler in ("dpmpp_2m", "dpmpp_2m_sde"):
        return {"x0": jnp.zeros_like(x), "h": zero}
    if sampler == "lms":
        return {"derivatives": jnp.zeros((grids.LMS_MAX_ORDER, *x.shape), x.dtype)}
    if sampler == "unipc":
        return {
            "x_last": jnp.zeros_like(x),
            "m1": jnp.zeros_like(x),
            "m2": jnp.zeros_like(x),
            "lam1": zero,
            "lam2": zero,
            "sigma1": jnp.ones((), x.dtype),
            "order": jnp.zeros((), jnp.int32),
        }
    return {}


STEPS: dict[str, Callable[..., tuple[jax.Array, State]]] = {
    "ddpm": ddim_step,  # with eta = 1
    "ddim": ddim_step,
    "euler": euler_step,
    "euler_ancestral": euler_ancestral_step,
    "heun": heun_step,
    "dpmpp_2m": dpmpp_2m_step,
    "dpmpp_2m_sde": dpmpp_2m_sde_step,
    "lms": lms_step,
    "unipc": unipc_step,
}
SAMPLERS = tuple(STEPS)
# ddpm has no step count of its own: it visits the timesteps the grid gives (all T by default).


def validate_sampler(name: str, num_steps: int, num_timesteps: int, spacing: str = "leading"):
    """Raises ValueError naming the `sampler.*` field when an option is invalid."""
    if name not in STEPS:
        raise ValueError(f"sampler.name={name!r} is not known; allowed: {', '.join(SAMPLERS)}")
    if not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"sampler.num_steps={num_steps!r} must be an integer in [1, {num_timesteps}] "
            "(diffusion.num_timesteps)"
        )
    grids.validate_spacing(spacing)


def nfe_per_step(sampler: str, g: Step) -> jax.Array:
    """Network evaluations of one step: Heun evaluates twice except onto sigma = 0."""
    if sampler == "heun":
        return 1 + (g["sigma_next"] > 0).astype(jnp.int32)
    return jnp.ones((), jnp.int32)


def make_denoiser(
    model: Callable[[jax.Array, jax.Array], jax.Array],
    prediction: str,
    thresholding: str = "none",
    dynamic_percentile: float = 0.995,
) -> Denoiser:
    """D(x, sigma, t): scale x to the model's x_t, call it, convert its output to x0, threshold."""

    def denoise(x: jax.Array, sigma: jax.Array, t: jax.Array) -> jax.Array:
        alpha_bar = 1.0 / (1.0 + sigma**2)
        x_t = x * jnp.sqrt(alpha_bar)
        output = model(x_t, jnp.full((x.shape[0],), t, jnp.float32)).astype(x.dtype)
        x0, _ = forward.to_x0_eps(prediction, output, x_t, alpha_bar)
        return guidance.threshold_x0(x0, thresholding, dynamic_percentile)

    return denoise


def sample_on_grid(
    denoise: Denoiser,
    grid: Grid,
    x_T: jax.Array,
    key: jax.Array,
    *,
    sampler: str,
    eta: float | jax.Array = 0.0,
    return_trajectory: bool = False,
) -> SampleOutput:
    """Scans `sampler`'s step over the grid from x_T ~ N(0, I) (VP scale) to x_0.

    Step i draws its noise as normal(fold_in(key, i)), so any reference can replay it.
    Padding steps (steps_left == 0) are skipped with `lax.cond` and cost no evaluations.
    """
    step_fn = STEPS[sampler]
    eta = jnp.asarray(1.0 if sampler == "ddpm" else eta, x_T.dtype)
    x = x_T * jnp.sqrt(1.0 + grid.sigmas[0] ** 2)
    rows = {
        "t": grid.timesteps,
        "t_next": jnp.append(grid.timesteps[1:], 0.0),
        "sigma": grid.sigmas,
        "sigma_next": grid.sigmas_next,
        "steps_left": grid.steps_left,
        "lms_coeffs": grid.lms_coeffs,
        "index": jnp.arange(grid.max_steps, dtype=jnp.int32),
    }

    def body(carry, g):
        x, state, nfe = carry
        noise = jax.random.normal(jax.random.fold_in(key, g["index"]), x.shape, x.dtype)
        active = g["steps_left"] > 0
        x, state = jax.lax.cond(
            active,
            lambda operands: step_fn(denoise, operands[0], operands[1], g, noise, eta),
            lambda operands: operands,
            (x, state),
        )
        nfe = nfe + jnp.where(active, nfe_per_step(sampler, g), 0)
        vp_state = x / jnp.sqrt(1.0 + jnp.where(active, g["sigma_next"], 0.0) ** 2)
        return (x, state, nfe), (vp_state if return_trajectory else None)

    initial = (x, _initial_state(sampler, x), jnp.zeros((), jnp.int32))
    (x, _, nfe), trajectory = jax.lax.scan(body, initial, rows)
    return SampleOutput(samples=x, trajectory=trajectory, nfe=nfe)


def sample(
    model_fn: Callable[..., jax.Array],
    schedule: NoiseSchedule,
    x_T: jax.Array,
    key: jax.Array,
    *,
    sampler: str = "ddim",
    num_steps: int = 50,
    spacing: str = "leading",
    max_steps: int | None = None,
    prediction: str = "eps",
    eta: float | jax.Array = 0.0,
    cond: Any = None,
    uncond: Any = None,
    guidance_scale: float | jax.Array | None = None,
    guidance_rescale: float | jax.Array = 0.0,
    thresholding: str = "none",
    dynamic_percentile: float = 0.995,
    lms_order: int = grids.LMS_MAX_ORDER,
    return_trajectory: bool = False,
) -> SampleOutput:
    """Draws samples from a VP diffusion model with any sampler; the notebook-facing entry point.

    Args:
      model_fn: `model_fn(x_t, t)` or, with `cond`, `model_fn(x_t, t, cond)`; returns the output
        in the `prediction` parameterisation.
      x_T: initial noise N(0, I) [B, ...]; its sharding is kept through the scan.
      cond / uncond: conditioning pytrees with batch-leading leaves; with `guidance_scale` set,
        both branches run in one batched call per evaluation and are mixed by CFG.
      max_steps: pad the grid to this length so all step counts up to it share one compile.
    Returns:
      SampleOutput with samples [B, ...], the per-step trajectory if asked, and the NFE.
    """
    validate_sampler(sampler, num_steps, schedule.num_timesteps, spacing)
    forward.validate_prediction(prediction)
    guidance.validate_thresholding(thresholding, dynamic_percentile)
    grid = grids.make_grid(
        schedule, num_steps, spacing, max_steps=max_steps, lms_order=lms_order, sampler=sampler
    )
    model = conditioned_model(model_fn, cond, uncond, guidance_scale, guidance_rescale)
    denoise = make_denoiser(model, prediction, thresholding, dynamic_percentile)
    return sample_on_grid(
        denoise, grid, x_T, key, sampler=sampler, eta=eta, return_trajectory=return_trajectory
    )


def conditioned_model(
    model_fn: Callable[..., jax.Array],
    cond: Any = None,
    uncond: Any = None,
    guidance_scale: float | jax.Array | None = None,
    guidance_rescale: float | jax.Array = 0.0,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Closes a model over its conditioning, with classifier-free guidance when a scale is set."""
    if cond is None:
        return model_fn
    if guidance_scale is None:
        return lambda x, t: model_fn(x, t, cond)
    if uncond is None:
        raise ValueError("classifier-free guidance needs `uncond` (a null or negative condition)")
    return guidance.guided_model(
        model_fn, cond, uncond, jnp.asarray(guidance_scale), jnp.asarray(guidance_rescale)
    )
