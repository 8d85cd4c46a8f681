"""precond.Precond: one parameterisation object, checked against each paper's definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import precond, schedules
from diffusion.precond import Precond

SCHEDULE = schedules.make_schedule("linear", 1000, 1e-4, 0.02)
T = jnp.array([0, 1, 250, 700, 999])


def _vp_levels():
    alpha_bar = SCHEDULE.alphas_cumprod[T][:, None]
    return jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)


def _flow_levels():
    t = jnp.array([0.001, 0.2, 0.5, 0.9, 1.0])[:, None]
    return 1.0 - t, t


def _pair(shape=(5, 6)):
    keys = jax.random.split(jax.random.key(0))
    return jax.random.normal(keys[0], shape), jax.random.normal(keys[1], shape)


@pytest.mark.parametrize(
    "process,prediction", [(p, q) for p, qs in precond.PROCESS_PREDICTIONS.items() for q in qs]
)
def test_target_then_x0_round_trips(process, prediction):
    """x0 recovered from (x_t, target) is x0, for every parameterisation the process defines."""
    x0, eps = _pair()
    alpha, s = _vp_levels() if process == "ddpm" else _flow_levels()
    p = Precond(prediction, sigma_data=0.5)
    x_t = alpha * x0 + s * eps
    x0_hat = p.x0(p.target(x0, eps, alpha, s), x_t, alpha, s)
    # eps at t = 999 divides by alpha ~ 0.006: float32 error grows accordingly.
    np.testing.assert_allclose(x0_hat, x0, atol=2e-3)


def test_targets_follow_the_papers():
    x0, eps = _pair()
    alpha, s = _vp_levels()
    np.testing.assert_array_equal(Precond("eps").target(x0, eps, alpha, s), eps)
    np.testing.assert_array_equal(Precond("x0").target(x0, eps, alpha, s), x0)
    # Salimans & Ho 2022, sec. 4: v = alpha eps - sigma x0.
    np.testing.assert_allclose(Precond("v").target(x0, eps, alpha, s), alpha * eps - s * x0)
    # Rectified flow: d/dt ((1 - t) x0 + t eps) = eps - x0.
    a_f, s_f = _flow_levels()
    np.testing.assert_allclose(Precond("velocity").target(x0, eps, a_f, s_f), eps - x0)


def test_edm_scalings_are_karras_table_1():
    """In the sigma view x = x0 + sigma n: D = c_skip x + c_out F(c_in x), with
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2); x_t = alpha x, so c_skip on x_t is c_skip / alpha."""
    sd = 0.5
    alpha, s = _vp_levels()
    sigma = s / alpha
    p = Precond("edm", sigma_data=sd)
    c_skip, c_out = p.skip_out(alpha, s)
    np.testing.assert_allclose(c_skip * alpha, sd**2 / (sigma**2 + sd**2), rtol=1e-5)
    np.testing.assert_allclose(c_out, sigma * sd / jnp.sqrt(sigma**2 + sd**2), rtol=1e-5)
    # The network sees c_in x = (c_in / alpha) x_t.
    np.testing.assert_allclose(
        p.input_scale(alpha, s) * alpha, 1.0 / jnp.sqrt(sigma**2 + sd**2), rtol=1e-5
    )
    x0, eps = _pair()
    target = p.target(x0, eps, alpha, s)  # F = (x0 - c_skip x) / c_out
    x = x0 + sigma * eps
    reference = (x0 - sd**2 / (sigma**2 + sd**2) * x) / (sigma * sd / jnp.sqrt(sigma**2 + sd**2))
    np.testing.assert_allclose(target, reference, rtol=2e-4, atol=2e-4)


def test_v_is_edm_with_unit_sigma_data_up_to_sign():
    """Salimans & Ho's v is EDM's F at sigma_data = 1 (negated); both see x_t unscaled."""
    alpha, s = _vp_levels()
    v_a, v_b = Precond("v").coefficients(alpha, s)
    e_a, e_b = Precond("edm", sigma_data=1.0).coefficients(alpha, s)
    np.testing.assert_allclose(v_a, -e_a, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v_b, -e_b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(Precond("edm", 1.0).input_scale(alpha, s), 1.0, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "edm"])
def test_output_error_per_x0_error_is_the_conversion_factor(prediction):
    """Perturbing the output by d moves x0 by c_out d: the factor is 1 / c_out^2."""
    alpha, s = _vp_levels()
    p = Precond(prediction)
    _, c_out = p.skip_out(alpha, s)
    np.testing.assert_allclose(p.output_per_x0_error(alpha, s), 1.0 / c_out**2, rtol=1e-4)


def test_eps_factor_is_the_snr():
    alpha, s = _vp_levels()
    np.testing.assert_allclose(
        Precond("eps").output_per_x0_error(alpha, s), alpha**2 / s**2, rtol=1e-6
    )


def test_undefined_combinations_are_refused():
    with pytest.raises(ValueError, match=r"prediction='score' is not known"):
        precond.validate_prediction("score")
    with pytest.raises(ValueError, match=r"'eps' is not defined for the 'flow' process"):
        precond.validate_prediction("eps", "flow")
    with pytest.raises(ValueError, match=r"'velocity' is not defined for the 'ddpm' process"):
        precond.validate_prediction("velocity", "ddpm")
