"""processes: noise levels of the VP and flow processes, their training draws and sampler views."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import processes, schedules
from diffusion.processes import TimeSampling

SCHEDULE = schedules.make_schedule("linear", 1000, 1e-4, 0.02)
N = 100_000


def test_uniform_vp_timesteps_cover_the_range():
    levels = processes.draw_levels(jax.random.key(0), N, "ddpm", SCHEDULE)
    counts = np.bincount(np.asarray(levels.timestep), minlength=1000)
    assert levels.timestep.dtype == jnp.int32 and counts.shape == (1000,)
    np.testing.assert_allclose(counts.reshape(10, 100).sum(1) / N, 0.1, atol=0.005)
    np.testing.assert_allclose(levels.alpha**2, SCHEDULE.alphas_cumprod[levels.timestep], rtol=1e-6)
    np.testing.assert_allclose(levels.alpha**2 + levels.s**2, 1.0, rtol=1e-6)


def test_uniform_flow_times_and_levels():
    levels = processes.draw_levels(jax.random.key(0), N, "flow", None)
    t = np.asarray(levels.s)
    assert 0 <= t.min() and t.max() < 1 and abs(t.mean() - 0.5) < 0.005
    np.testing.assert_allclose(levels.alpha, 1 - t)
    np.testing.assert_allclose(levels.timestep, 1000 * t, rtol=1e-6)


def test_logit_normal_is_sd3s_density():
    """Esser et al. 2024 eq. 19: logit(t) ~ N(m, s)."""
    sampling = TimeSampling("logit_normal", mean=0.5, std=0.8)
    t = np.asarray(processes.draw_levels(jax.random.key(1), N, "flow", None, sampling).s)
    logit = np.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 0.01 and abs(logit.std() - 0.8) < 0.01
    vp = processes.draw_levels(jax.random.key(1), N, "ddpm", SCHEDULE, sampling)
    np.testing.assert_array_equal(vp.timestep, np.minimum(np.floor(t * 1000), 999))


def test_lognormal_sigma_is_edms_density():
    """Karras et al. 2022 sec. 5: ln sigma ~ N(P_mean, P_std); VP clips to the schedule's range
    and tells the network the fractional timestep of that sigma."""
    sampling = TimeSampling("lognormal_sigma", mean=-1.2, std=1.2)
    vp = processes.draw_levels(jax.random.key(2), N, "ddpm", SCHEDULE, sampling)
    sigma = np.asarray(vp.s / vp.alpha)
    sigmas = np.asarray(SCHEDULE.sigmas)
    assert sigma.min() >= sigmas[0] * (1 - 1e-5) and sigma.max() <= sigmas[-1] * (1 + 1e-5)
    inside = (sigma > sigmas[0] * 1.01) & (sigma < sigmas[-1] * 0.99)
    # The truncated normal's median is P_mean (the clip removes ~3% at the low end only).
    assert abs(np.median(np.log(sigma[inside])) - (-1.2)) < 0.05
    expected_t = np.interp(np.log(sigma), np.log(sigmas), np.arange(1000))
    np.testing.assert_allclose(vp.timestep, expected_t, atol=2e-3)
    flow = processes.draw_levels(jax.random.key(2), N, "flow", None, sampling)
    flow_sigma = np.asarray(flow.s / flow.alpha)  # t / (1 - t)
    log_sigma = np.log(flow_sigma)
    assert abs(log_sigma.mean() + 1.2) < 0.02 and abs(log_sigma.std() - 1.2) < 0.02


def test_levels_from_training_sigmas_land_on_integer_timesteps():
    t = jnp.array([0, 10, 500, 999])
    levels = processes.vp_levels_from_sigma(SCHEDULE, SCHEDULE.sigmas[t])
    np.testing.assert_allclose(levels.timestep, t, atol=1e-2)
    np.testing.assert_allclose(levels.alpha**2, SCHEDULE.alphas_cumprod[t], rtol=1e-5)


def test_views_map_the_state_to_x_t():
    sigma = jnp.array([0.5, 2.0])
    alpha, s, scale = processes.view_levels("ddpm", sigma)
    np.testing.assert_allclose(alpha, 1 / np.sqrt(1 + np.asarray(sigma) ** 2), rtol=1e-6)
    np.testing.assert_allclose(s / alpha, sigma, rtol=1e-6)  # x = x_t / alpha = x0 + sigma eps
    np.testing.assert_allclose(scale, alpha)
    alpha, s, scale = processes.view_levels("flow", jnp.array([1.0, 0.25]))
    np.testing.assert_allclose(alpha, [0.0, 0.75])
    np.testing.assert_allclose(scale, 1.0)


def test_shift_matches_sd3_formula():
    t = np.linspace(1, 0, 5)
    np.testing.assert_allclose(processes.flow_times(4, 3.0), 3 * t / (1 + 2 * t))


def test_bad_time_sampling_is_refused():
    with pytest.raises(ValueError, match="t_sampling='beta' is not known"):
        processes.validate_time_sampling(TimeSampling("beta"))
    with pytest.raises(ValueError, match="std=0"):
        processes.validate_time_sampling(TimeSampling("logit_normal", std=0.0))
