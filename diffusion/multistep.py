"""Third-order multistep steps: DPM-Solver++(3M) and its SDE, UniPC up to order 3, iPNDM, DEIS.

Same contract as solvers.py: step(denoise, x, state, g, noise, eta) -> (x_next, state) in the
sigma view x = x0 + sigma eps, with lambda = -log(sigma) the half log-SNR. Exponential
integrators are written with the phi functions phi_k(z) = sum_j z^j / (j + k)! (Hochbruck &
Ostermann 2010), evaluated by series near 0 so that small steps keep their float32 accuracy.
Warm-up: a step uses as many past evaluations as exist; the last steps lower the order as
diffusers' `lower_order_final` does (the final step onto sigma = 0 is always first order, where
it returns the denoiser's x0).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

HISTORY = 3  # past x0 / eps kept by the third-order methods
LOWER_ORDER_BELOW = 15  # diffusers lowers the order of the last two steps below this many steps
PHI_SERIES_TERMS = 12
IPNDM_COEFFS = (  # Adams-Bashforth weights of orders 1-4 (Zhang & Chen 2023, iPNDM)
    (1.0, 0.0, 0.0, 0.0),
    (3.0 / 2.0, -1.0 / 2.0, 0.0, 0.0),
    (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0, 0.0),
    (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
)


def phi(k: int, z: jax.Array) -> jax.Array:
    """phi_k(z) = sum_j z^j / (j + k)!; the series for |z| < 1, else the recursion
    phi_{k+1}(z) = (phi_k(z) - 1 / k!) / z from phi_0 = e^z."""
    small = jnp.abs(z) < 1.0
    z_small = jnp.where(small, z, 0.0)
    series = sum(z_small**j * (1.0 / math.factorial(j + k)) for j in range(PHI_SERIES_TERMS))
    z_large = jnp.where(small, 1.0, z)
    value = jnp.exp(z_large)
    for order in range(k):
        value = (value - 1.0 / math.factorial(order)) / z_large
    return jnp.where(small, series, value)


def step_coefficient(k: int, h: jax.Array) -> jax.Array:
    """h phi_k(-h) = 1 / (k-1)! - phi_{k-1}(-h): the weight of the (k-1)-th divided difference
    in an exponential-integrator step of length h in lambda; finite as h -> inf (sigma_next = 0)."""
    if k == 1:
        return -jnp.expm1(-h)
    return 1.0 / math.factorial(k - 1) - phi(k - 1, -h)


def half_log_snr(sigma: jax.Array) -> jax.Array:
    """lambda = log(alpha / sigma_VP) = -log(sigma); +inf at sigma = 0."""
    return -jnp.log(sigma)


def safe_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator where the denominator is finite and nonzero, else 1."""
    ok = jnp.isfinite(denominator) & (denominator != 0)
    return jnp.where(ok, numerator / jnp.where(ok, denominator, 1.0), 1.0)


def multistep_order(g: dict[str, jax.Array], max_order: int) -> jax.Array:
    """The order of this step: warm-up min(max, index + 1), first order on the last step, and at
    most second order on the one before when the chain is short (diffusers' lower_order_final)."""
    num_steps = g["index"] + g["steps_left"]
    order = jnp.minimum(max_order, g["index"] + 1)
    order = jnp.where(g["steps_left"] == 1, 1, order)
    short = (g["steps_left"] == 2) & (num_steps < LOWER_ORDER_BELOW)
    return jnp.where(short, jnp.minimum(order, 2), order)


def _push(history: jax.Array, value: jax.Array) -> jax.Array:
    """history with `value` in front and the oldest entry dropped."""
    return jnp.concatenate([value[None], history[:-1]], axis=0)


# --- DPM-Solver++(3M) --------------------------------------------------------------------------


def _dpm_differences(x0, state, lam, h):
    """Divided differences of x0 in lambda (Lu et al. 2022, DPM-Solver++ multistep): D1 of the
    midpoint second-order step, and D1, D2 of the third-order step."""
    x0_1, x0_2 = state["x0"][0], state["x0"][1]
    r0 = safe_ratio(lam - state["lam"][0], h)
    r1 = safe_ratio(state["lam"][0] - state["lam"][1], h)
    d1_0 = (x0 - x0_1) / r0
    d1_1 = (x0_1 - x0_2) / r1
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return d1_0, d1_0 + r0 * d2, d2


def _dpmpp_3m(denoise, x, state, g, noise, stochastic: bool, d2_weight: float = 2.0):
    """DPM-Solver++(3M) for the probability-flow ODE, or (stochastic) for the SDE.

    With x0(lambda) = x0 + v x0' + v^2 / 2 x0'' over the step (v = lambda - lambda_i), the ODE
    solution is x' = (sigma'/sigma) x + h phi_1 x0 + h^2 phi_2 x0' + h^3 phi_3 x0'' (phi_k at
    -h; Lu et al. 2022, eq. 9 expanded). The divided differences give D1 = h x0' and D2 =
    h^2 x0'' / 2 exactly for a quadratic, so D2's weight is 2 h phi_3: the step is then exact for
    quadratic x0 (tests/diffusion/test_multistep.py). DPM-Solver's reference code, diffusers
    and k-diffusion weight D2 by h phi_3 (d2_weight = 1, "dpmpp_3m_diffusers"), which leaves an
    O(h^3) local error. SDE: the same polynomial integrated against 2 e^{-2(lambda' - lambda)},
    i.e. every weight taken at 2h, plus sigma' sqrt(1 - e^{-2h}) noise.
    """
    sigma, sigma_next = g["sigma"], g["sigma_next"]
    x0 = denoise(x, sigma, g["t"])
    lam = half_log_snr(sigma)
    h = half_log_snr(sigma_next) - lam
    order = multistep_order(g, 3)
    d1_mid, d1, d2 = _dpm_differences(x0, state, lam, h)
    step = 2.0 * h if stochastic else h
    decay = (sigma_next / sigma) * (jnp.exp(-h) if stochastic else 1.0)
    first = decay * x + step_coefficient(1, step) * x0
    second = first + 0.5 * step_coefficient(1, step) * d1_mid
    third = first + step_coefficient(2, step) * d1 + d2_weight * step_coefficient(3, step) * d2
    x_next = jnp.where(order == 1, first, jnp.where(order == 2, second, third))
    if stochastic:
        x_next = x_next + sigma_next * jnp.sqrt(-jnp.expm1(-2.0 * h)) * noise
    return x_next, {"x0": _push(state["x0"], x0), "lam": _push(state["lam"], lam)}


def dpmpp_3m_step(denoise, x, state, g, noise, eta):
    """DPM-Solver++(3M) (Lu et al. 2022): third-order multistep on the probability-flow ODE."""
    return _dpmpp_3m(denoise, x, state, g, noise, stochastic=False)


def dpmpp_3m_diffusers_step(denoise, x, state, g, noise, eta):
    """DPM-Solver++(3M) with the D2 weight of diffusers' DPMSolverMultistepScheduler (order 3)."""
    return _dpmpp_3m(denoise, x, state, g, noise, stochastic=False, d2_weight=1.0)


def dpmpp_3m_sde_step(denoise, x, state, g, noise, eta):
    """DPM-Solver++(3M) SDE: the third-order multistep update of the reverse SDE (diffusers'
    sde-dpmsolver++ of order 3 weights D2 by 2h phi_3(-2h) - 1, off by -1 from the integral)."""
    return _dpmpp_3m(denoise, x, state, g, noise, stochastic=True)


def dpmpp_3m_state(x: jax.Array) -> dict[str, jax.Array]:
    return {"x0": jnp.zeros((2, *x.shape), x.dtype), "lam": jnp.zeros((2,), x.dtype)}


# --- UniPC -------------------------------------------------------------------------------------


def _unipc_b(h: jax.Array, variant: str) -> tuple[jax.Array, list[jax.Array]]:
    """B(h) and the order conditions' right-hand sides b_k = k! (-h) phi_{k+1}(-h) / B(h),
    k = 1..3 (Zhao et al. 2023, Algorithm 3, data prediction); B(h) = -h (bh1) or e^{-h} - 1
    (bh2). Written with phi so that b stays accurate for small steps."""
    z = -h
    if variant == "bh1":
        return z, [math.factorial(k) * phi(k + 1, z) for k in (1, 2, 3)]
    phi_1 = phi(1, z)
    return jnp.expm1(z), [math.factorial(k) * phi(k + 1, z) / phi_1 for k in (1, 2, 3)]


def _unipc_rhos_predictor(rks, b):
    """UniP's weights: 0.5 at order 2 (Zhao et al.'s simplification), and at order 3 the solution
    of [[1, 1], [r1, r2]] rho = [b1, b2]."""
    r1, r2 = rks
    rho_1 = safe_ratio(b[1] - r2 * b[0], r1 - r2)
    return jnp.asarray(0.5), (rho_1, b[0] - rho_1)


def _unipc_rhos_corrector(rks, b):
    """UniC's weights: 0.5 at order 1; at order c the solution of the c x c Vandermonde system
    sum_j rho_j r_j^(k-1) = b_k with nodes (r_1, .., r_{c-1}, 1)."""
    r1, r2 = rks
    rho_2a = safe_ratio(b[0] - b[1], 1.0 - r1)  # [[1, 1], [r1, 1]] rho = [b1, b2]
    order_2 = (rho_2a, b[0] - rho_2a)
    nodes = jnp.stack([r1, r2, jnp.ones_like(r1)])
    vandermonde = jnp.stack([jnp.ones_like(nodes), nodes, nodes**2])
    ok = jnp.all(jnp.isfinite(vandermonde)) & (r1 != r2) & (r1 != 1.0) & (r2 != 1.0)
    vandermonde = jnp.where(ok, vandermonde, jnp.eye(3, dtype=nodes.dtype))
    order_3 = tuple(jnp.linalg.solve(vandermonde, jnp.stack(b)))
    return order_2, order_3


def unipc_step(denoise, x, state, g, noise, eta, *, max_order: int = 2, variant: str = "bh2"):
    """UniPC (Zhao et al. 2023): UniC corrects the previous step with the x0 just evaluated, then
    UniP predicts; one evaluation per step, orders up to `max_order` (3 at most), B(h) `variant`.
    """
    sigma, sigma_next, index = g["sigma"], g["sigma_next"], g["index"]
    x0 = denoise(x, sigma, g["t"])
    lam = half_log_snr(sigma)
    past, lams = state["x0"], state["lam"]

    # UniC of the previous step's order: redo it from x_last with x0 at its end as one more node.
    h = lam - lams[0]
    h_safe = jnp.where(index > 0, h, 1.0)
    big_b, b = _unipc_b(h_safe, variant)
    rks = (safe_ratio(lams[1] - lams[0], h_safe), safe_ratio(lams[2] - lams[0], h_safe))
    diffs = ((past[1] - past[0]) / rks[0], (past[2] - past[0]) / rks[1])
    (rho2_1, rho2_t), (rho3_1, rho3_2, rho3_t) = _unipc_rhos_corrector(rks, b)
    change = x0 - past[0]
    correction = jnp.where(
        state["order"] == 1,
        0.5 * change,
        jnp.where(
            state["order"] == 2,
            rho2_1 * diffs[0] + rho2_t * change,
            rho3_1 * diffs[0] + rho3_2 * diffs[1] + rho3_t * change,
        ),
    )
    corrected = (sigma / state["sigma"]) * state["x_last"] - jnp.expm1(-h_safe) * past[0]
    x = jnp.where(index > 0, corrected - big_b * correction, x)

    # UniP of order p: x0 here and p - 1 older ones.
    order = jnp.minimum(jnp.minimum(max_order, g["steps_left"]), index + 1)
    h = half_log_snr(sigma_next) - lam
    big_b, b = _unipc_b(h, variant)
    rks = (safe_ratio(lams[0] - lam, h), safe_ratio(lams[1] - lam, h))
    diffs = ((past[0] - x0) / rks[0], (past[1] - x0) / rks[1])
    rho2, (rho3_1, rho3_2) = _unipc_rhos_predictor(rks, b)
    prediction = jnp.where(order == 2, rho2 * diffs[0], rho3_1 * diffs[0] + rho3_2 * diffs[1])
    x_next = (sigma_next / sigma) * x - jnp.expm1(-h) * x0
    x_next = jnp.where(order > 1, x_next - big_b * prediction, x_next)
    new_state = {
        "x_last": x,
        "x0": _push(past, x0),
        "lam": _push(lams, lam),
        "sigma": sigma,
        "order": order,
    }
    return x_next, new_state


def unipc_state(x: jax.Array) -> dict[str, jax.Array]:
    return {
        "x_last": jnp.zeros_like(x),
        "x0": jnp.zeros((HISTORY, *x.shape), x.dtype),
        "lam": jnp.zeros((HISTORY,), x.dtype),
        "sigma": jnp.ones((), x.dtype),
        "order": jnp.zeros((), jnp.int32),
    }


# --- iPNDM and DEIS: linear multistep on eps ----------------------------------------------------


def ipndm_step(denoise, x, state, g, noise, eta):
    """iPNDM (Zhang & Chen 2023, "improved PNDM"): Adams-Bashforth of order up to 4 with fixed
    weights on the ODE derivative dx/dsigma = (x - D) / sigma, warming up from Euler."""
    derivative = (x - denoise(x, g["sigma"], g["t"])) / g["sigma"]
    history = _push(state["derivatives"], derivative)
    order = jnp.minimum(g["index"] + 1, 4)
    weights = jnp.asarray(IPNDM_COEFFS, x.dtype)[order - 1]
    combined = jnp.tensordot(weights, history, axes=1)
    return x + (g["sigma_next"] - g["sigma"]) * combined, {"derivatives": history}


def ipndm_state(x: jax.Array) -> dict[str, jax.Array]:
    return {"derivatives": jnp.zeros((4, *x.shape), x.dtype)}


def _exp_antiderivative(polynomial: np.polynomial.Polynomial, u: float) -> float:
    """F(u) with F' = P(u) e^u: e^u sum_j (-1)^j P^(j)(u); 0 at u = -inf (sigma = 0)."""
    if u == -np.inf:
        return 0.0
    total, derivative = 0.0, polynomial
    for j in range(polynomial.degree() + 1):
        total += (-1) ** j * derivative(u)
        derivative = derivative.deriv()
    return float(np.exp(u) * total)


def deis_coefficients(sigmas: np.ndarray, order: int = 3, width: int = 4) -> np.ndarray:
    """Weights of the last eps values for every step of DEIS (Zhang & Chen 2023, tAB-DEIS with
    the log-rho time of diffusers' DEISMultistepScheduler), [n, width].

    Step i integrates dx/drho = eps(rho) from sigmas[i] to sigmas[i + 1] with eps interpolated
    by the Lagrange polynomial in u = log(rho) through the last `order` evaluations; with
    rho = e^u the integrals are exact (`_exp_antiderivative`). Orders follow multistep_order,
    and a step onto sigma = 0 is first order (DDIM's step to x0).
    """
    num_steps = len(sigmas) - 1
    coeffs = np.zeros((num_steps, width))
    for i in range(num_steps):
        current = min(i + 1, order)
        if i == num_steps - 1 and (num_steps < LOWER_ORDER_BELOW or sigmas[i + 1] == 0):
            current = 1
        elif i == num_steps - 2 and num_steps < LOWER_ORDER_BELOW:
            current = min(current, 2)
        nodes = [np.log(sigmas[i - k]) for k in range(current)]
        u_end = np.log(sigmas[i + 1]) if sigmas[i + 1] > 0 else -np.inf
        for k in range(current):
            basis = np.polynomial.Polynomial([1.0])
            for j in range(current):
                if j != k:
                    basis *= np.polynomial.Polynomial([-nodes[j], 1.0]) / (nodes[k] - nodes[j])
            coeffs[i, k] = _exp_antiderivative(basis, u_end) - _exp_antiderivative(basis, nodes[0])
    return coeffs
