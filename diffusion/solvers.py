"""Sampler steps and their registry: adding a sampler is one step function and one entry here.

Every step takes (denoise, x, state, g, noise, eta) and returns (x_next, state). x is the
sampler's state in its process's view (processes.py): for VP x = x0 + sigma eps, for flow x = x_t
with sigma = t; the network is seen only through the denoiser D(x, sigma, t) -> x0 estimate, so
every sampler serves every parameterisation. `g` is one row of the grid (grids.py) plus its index.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import multistep

Denoiser = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (x, sigma, t) -> x0
State = dict[str, jax.Array]
Step = dict[str, jax.Array]  # one row of the grid plus its index
StepFn = Callable[..., tuple[jax.Array, State]]
LMS_MAX_ORDER = 4


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


def _dpm_multistep_x0(
    denoise: Denoiser, x, state: State, g: Step
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x0, h, d) of a 2M step: d = x0 + (x0 - x0_prev) / (2 r) with r = h_prev / h (midpoint
    form, Lu et al. 2022), falling back to x0 on the first and the final step."""
    sigma, sigma_next = g["sigma"], g["sigma_next"]
    x0 = denoise(x, sigma, g["t"])
    h = multistep.half_log_snr(sigma_next) - multistep.half_log_snr(sigma)
    r = multistep.safe_ratio(state["h"], h)
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


def lms_coefficients(sigmas: np.ndarray, order: int = LMS_MAX_ORDER) -> np.ndarray:
    """Weights of the last `order` derivatives for each linear multistep step, [n, LMS_MAX_ORDER].

    Step i integrates the Lagrange polynomial through the derivatives at sigmas[i], sigmas[i-1], ...
    from sigmas[i] to sigmas[i+1] (Karras et al. 2022's LMS, after Adams-Bashforth); the order
    ramps up over the first steps while there is not enough history.
    """
    num_steps = len(sigmas) - 1
    coeffs = np.zeros((num_steps, LMS_MAX_ORDER))
    for i in range(num_steps):
        current_order = min(i + 1, order)
        nodes = [sigmas[i - k] for k in range(current_order)]
        for k in range(current_order):
            basis = np.polynomial.Polynomial([1.0])
            for j in range(current_order):
                if j != k:
                    basis *= np.polynomial.Polynomial([-nodes[j], 1.0]) / (nodes[k] - nodes[j])
            antiderivative = basis.integ()
            coeffs[i, k] = antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i])
    return coeffs


# --- the registry ----------------------------------------------------------------------------


def _no_state(x: jax.Array) -> State:
    return {}


def _multistep_state(x: jax.Array) -> State:
    return {"x0": jnp.zeros_like(x), "h": jnp.zeros((), x.dtype)}


def _lms_state(x: jax.Array) -> State:
    return {"derivatives": jnp.zeros((LMS_MAX_ORDER, *x.shape), x.dtype)}


def _one_evaluation(g: Step) -> jax.Array:
    return jnp.ones((), jnp.int32)


def _heun_evaluations(g: Step) -> jax.Array:
    """Heun evaluates twice, except onto sigma = 0 (no corrector there)."""
    return 1 + (g["sigma_next"] > 0).astype(jnp.int32)


def _lms_rows(sigmas: np.ndarray, order: int) -> dict[str, np.ndarray]:
    return {"lms_coeffs": lms_coefficients(sigmas, order)}


def _deis_rows(sigmas: np.ndarray, order: int) -> dict[str, np.ndarray]:
    """DEIS's own third-order weights (lms_order is LMS's setting)."""
    return {"lms_coeffs": multistep.deis_coefficients(sigmas, width=LMS_MAX_ORDER)}


def _unipc(max_order: int, variant: str) -> StepFn:
    return functools.partial(multistep.unipc_step, max_order=max_order, variant=variant)


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """What the driver needs to know about one sampler."""

    step: StepFn
    processes: tuple[str, ...] = ("ddpm",)  # processes whose state view the step is exact in
    evaluations: Callable[[Step], jax.Array] = _one_evaluation  # network calls of one step
    init_state: Callable[[jax.Array], State] = _no_state  # history carried through the scan
    # Extra per-step grid rows built on the host from the sigmas [n + 1] and an order option.
    grid_rows: Callable[[np.ndarray, int], dict[str, np.ndarray]] | None = None
    skip_zero: bool = False  # linspace / leading grids drop t = 0 (multistep solvers, diffusers)
    eta: float | None = None  # a fixed eta (DDPM's ancestral step is DDIM at eta = 1)
    # Whether set_alpha_to_one=False may end the grid at alpha_bar_0 rather than sigma = 0 (only
    # diffusers' DDIM reads that setting; its other schedulers always end at sigma = 0).
    settable_final_alpha: bool = False


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(ddim_step, eta=1.0),
    "ddim": SamplerSpec(ddim_step, settable_final_alpha=True),
    "euler": SamplerSpec(euler_step, processes=("ddpm", "flow")),
    "euler_ancestral": SamplerSpec(euler_ancestral_step),
    "heun": SamplerSpec(heun_step, processes=("ddpm", "flow"), evaluations=_heun_evaluations),
    "dpmpp_2m": SamplerSpec(dpmpp_2m_step, init_state=_multistep_state, skip_zero=True),
    "dpmpp_2m_sde": SamplerSpec(dpmpp_2m_sde_step, init_state=_multistep_state, skip_zero=True),
    "lms": SamplerSpec(lms_step, init_state=_lms_state, grid_rows=_lms_rows),
    "unipc": SamplerSpec(_unipc(2, "bh2"), init_state=multistep.unipc_state, skip_zero=True),
    # Third-order and few-step methods (multistep.py).
    "dpmpp_3m": SamplerSpec(
        multistep.dpmpp_3m_step, init_state=multistep.dpmpp_3m_state, skip_zero=True
    ),
    "dpmpp_3m_diffusers": SamplerSpec(
        multistep.dpmpp_3m_diffusers_step, init_state=multistep.dpmpp_3m_state, skip_zero=True
    ),
    "dpmpp_3m_sde": SamplerSpec(
        multistep.dpmpp_3m_sde_step, init_state=multistep.dpmpp_3m_state, skip_zero=True
    ),
    "unipc_bh1": SamplerSpec(_unipc(2, "bh1"), init_state=multistep.unipc_state, skip_zero=True),
    "unipc_3": SamplerSpec(_unipc(3, "bh2"), init_state=multistep.unipc_state, skip_zero=True),
    "unipc_3_bh1": SamplerSpec(_unipc(3, "bh1"), init_state=multistep.unipc_state, skip_zero=True),
    "ipndm": SamplerSpec(
        multistep.ipndm_step,
        processes=("ddpm", "flow"),
        init_state=multistep.ipndm_state,
        skip_zero=True,
    ),
    "deis": SamplerSpec(lms_step, init_state=_lms_state, grid_rows=_deis_rows, skip_zero=True),
}


def names_for(process: str) -> tuple[str, ...]:
    """The samplers that integrate `process`."""
    return tuple(name for name, spec in SAMPLERS.items() if process in spec.processes)
