"""diffusion/grids.py's steps_offset and end_at_zero, and set_alpha_to_one in samplers.make_grid /
samplers.sample (DDIM ending at the schedule's first level, as diffusers' SD configs ask)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import grids, samplers, schedules

T = 1000
SHAPE = (3, 4)


# The few sampler scans here are checked to float32 rounding, not XLA's optimisations.
pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module")
def schedule():
    return schedules.make_schedule("scaled_linear", T, 0.00085, 0.012)


def _sigma(schedule, t):
    """sigma at integer timestep t from the stored float32 alphas_cumprod, in float64."""
    alpha_bar = np.float64(np.asarray(schedule.alphas_cumprod)[t])
    return np.sqrt((1.0 - alpha_bar) / alpha_bar)


# --- spaced_timesteps with steps_offset -----------------------------------------------------------


@pytest.mark.parametrize("num_steps", [10, 50])
def test_leading_offset_closed_form(num_steps):
    steps = grids.spaced_timesteps(T, num_steps, "leading", steps_offset=1)
    expected = (np.arange(num_steps) * (T // num_steps) + 1)[::-1]
    np.testing.assert_array_equal(steps, expected)
    assert steps.dtype == np.float64


@pytest.mark.parametrize("num_steps", [10, 50])
def test_leading_offset_matches_diffusers_ddim(num_steps):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(steps_offset=1, timestep_spacing="leading")
    scheduler.set_timesteps(num_steps)
    ours = grids.spaced_timesteps(T, num_steps, "leading", steps_offset=1)
    np.testing.assert_array_equal(ours, scheduler.timesteps.numpy())


@pytest.mark.parametrize("num_steps", [10, 25])
def test_leading_offset_with_skip_zero_matches_diffusers_dpm_solver(num_steps):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(steps_offset=1, timestep_spacing="leading")
    scheduler.set_timesteps(num_steps)
    ours = grids.spaced_timesteps(T, num_steps, "leading", skip_zero=True, steps_offset=1)
    np.testing.assert_array_equal(ours, scheduler.timesteps.numpy())


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
@pytest.mark.parametrize("skip_zero", [False, True])
def test_offset_ignored_for_other_spacings(spacing, skip_zero):
    plain = grids.spaced_timesteps(T, 10, spacing, skip_zero=skip_zero)
    shifted = grids.spaced_timesteps(T, 10, spacing, skip_zero=skip_zero, steps_offset=7)
    np.testing.assert_array_equal(shifted, plain)


def test_offset_up_to_the_last_timestep_is_allowed():
    steps = grids.spaced_timesteps(T, 10, "leading", steps_offset=99)
    assert steps[0] == T - 1
    assert steps[-1] == 99


@pytest.mark.parametrize("num_steps,offset", [(10, 100), (T, 1)])
def test_offset_past_the_last_timestep_is_refused(num_steps, offset):
    with pytest.raises(ValueError, match=rf"steps_offset={offset} .*past the schedule's last"):
        grids.spaced_timesteps(T, num_steps, "leading", steps_offset=offset)


def test_negative_offset_is_refused():
    with pytest.raises(ValueError, match=r"steps_offset=-1 must be an integer >= 0"):
        grids.spaced_timesteps(T, 10, "leading", steps_offset=-1)


# --- timesteps_and_sigmas with end_at_zero --------------------------------------------------------


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "karras"])
def test_end_at_zero_false_ends_at_sigma_0(schedule, spacing):
    timesteps, sigmas = grids.timesteps_and_sigmas(schedule, 10, spacing, end_at_zero=False)
    ref_timesteps, ref_sigmas = grids.timesteps_and_sigmas(schedule, 10, spacing)
    assert sigmas.shape == (11,)
    assert ref_sigmas[-1] == 0.0
    np.testing.assert_allclose(sigmas[-1], _sigma(schedule, 0), rtol=1e-12)
    np.testing.assert_array_equal(sigmas[:-1], ref_sigmas[:-1])
    np.testing.assert_array_equal(timesteps, ref_timesteps)


def test_offset_timesteps_carry_their_sigmas(schedule):
    timesteps, sigmas = grids.timesteps_and_sigmas(schedule, 10, "leading", steps_offset=1)
    np.testing.assert_array_equal(timesteps, np.arange(901, 0, -100))
    np.testing.assert_allclose(sigmas[:-1], [_sigma(schedule, t) for t in range(901, 0, -100)])


# --- samplers.make_grid with set_alpha_to_one -----------------------------------------------------


def test_make_grid_ends_ddim_at_sigma_0_only(schedule):
    sigma_0 = _sigma(schedule, 0)
    for sampler, expected in (("ddim", sigma_0), ("euler", 0.0), ("ddpm", 0.0), ("lms", 0.0)):
        grid = samplers.make_grid(
            sampler,
            10,
            schedule=schedule,
            spacing="leading",
            steps_offset=1,
            set_alpha_to_one=False,
            max_steps=16,
        )
        assert float(grid.sigmas_next[9]) == pytest.approx(expected, rel=1e-6), sampler
        np.testing.assert_array_equal(grid.timesteps[:10], np.arange(901, 0, -100))
    grid = samplers.make_grid("ddim", 10, schedule=schedule, spacing="leading")
    assert float(grid.sigmas_next[9]) == 0.0


# --- samplers.sample with set_alpha_to_one --------------------------------------------------------


def _sample(schedule, model_fn, x_T, *, prediction="eps", **kwargs):
    return samplers.sample(
        model_fn,
        schedule,
        x_T,
        jax.random.key(1),
        sampler="ddim",
        num_steps=10,
        spacing="leading",
        steps_offset=1,
        prediction=prediction,
        **kwargs,
    )


@pytest.fixture(scope="module")
def x_T():
    return jax.random.normal(jax.random.key(0), SHAPE)


def test_ddim_eps_zero_sample_scales_to_alpha_bar_0(schedule, x_T):
    """eps = 0: every DDIM step keeps x0 = x_t / sqrt(ab_t) and lands on sqrt(ab_next) x0, so the
    result is x_T sqrt(ab_end / ab_901) with ab_end = ab_0 (set_alpha_to_one=False) or 1."""
    alpha_bar = np.asarray(schedule.alphas_cumprod, np.float64)
    zero_eps = lambda x, t: jnp.zeros_like(x)  # noqa: E731
    kept = _sample(schedule, zero_eps, x_T, set_alpha_to_one=False)
    clean = _sample(schedule, zero_eps, x_T)
    x = np.asarray(x_T, np.float64)
    np.testing.assert_allclose(kept.samples, x * np.sqrt(alpha_bar[0] / alpha_bar[901]), rtol=2e-6)
    np.testing.assert_allclose(clean.samples, x / np.sqrt(alpha_bar[901]), rtol=2e-6)
    assert int(kept.nfe) == 10


def test_ddim_constant_x0_sample_keeps_the_noise_at_sigma_0(schedule, x_T):
    """x0-prediction D = c: DDIM keeps (x - c) / sigma fixed in the sigma view x = x_t / sqrt(ab),
    so x_end = c + sigma_end (x_901 - c) / sigma_901, returned as x_t = sqrt(ab_end) x_end."""
    c = 0.3
    const_x0 = lambda x, t: jnp.full_like(x, c)  # noqa: E731
    sigma_first, sigma_0 = _sigma(schedule, 901), _sigma(schedule, 0)
    x_first = np.asarray(x_T, np.float64) * np.sqrt(1.0 + sigma_first**2)
    x_end = c + sigma_0 * (x_first - c) / sigma_first
    expected = x_end / np.sqrt(1.0 + sigma_0**2)
    # Padded past the 10 active steps: the final level must not move to the padding's sigma.
    out = _sample(
        schedule,
        const_x0,
        x_T,
        prediction="x0",
        set_alpha_to_one=False,
        max_steps=14,
        return_trajectory=True,
    )
    np.testing.assert_allclose(out.samples, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out.samples, c, atol=1e-3)  # it stops short of the clean sample
    assert out.trajectory.shape == (14, *SHAPE)
    for row in out.trajectory[9:]:  # the last active step, then the padding repeating it
        np.testing.assert_allclose(row, out.samples, rtol=1e-6)
    assert int(out.nfe) == 10
    clean = _sample(schedule, const_x0, x_T, prediction="x0")
    np.testing.assert_allclose(clean.samples, c, rtol=1e-6)


@pytest.mark.parametrize("bad", [True, -1, 1.5])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_bad_steps_offset_is_refused_for_every_spacing(spacing, bad):
    with pytest.raises(ValueError, match="steps_offset"):
        grids.spaced_timesteps(1000, 10, spacing, steps_offset=bad)


# --- sigma-placed spacings and explicit grids ---------------------------------------------------


def test_logsnr_spacing_is_uniform_in_log_sigma_over_the_schedule(schedule):
    timesteps, sigmas = grids.timesteps_and_sigmas(schedule, 8, "logsnr")
    train = grids.train_sigmas(schedule)
    np.testing.assert_allclose(sigmas[[0, -2]], [train[-1], train[0]], rtol=1e-12)
    steps = np.diff(np.log(sigmas[:-1]))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-10)
    assert sigmas[-1] == 0.0 and timesteps[0] == pytest.approx(T - 1)


def test_logsnr_spacing_equals_diffusers_exponential_sigmas(schedule):
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        use_exponential_sigmas=True,
    )
    scheduler.alphas_cumprod = torch.tensor(
        np.asarray(schedule.alphas_cumprod), dtype=torch.float32
    )
    scheduler.set_timesteps(12)
    _, sigmas = grids.timesteps_and_sigmas(schedule, 12, "logsnr")
    np.testing.assert_allclose(scheduler.sigmas.numpy(), sigmas, rtol=2e-5)


def test_edm_spacing_takes_rho_and_is_karras_at_seven(schedule):
    karras = grids.timesteps_and_sigmas(schedule, 10, "karras")[1]
    np.testing.assert_allclose(grids.timesteps_and_sigmas(schedule, 10, "edm")[1], karras)
    linear = grids.timesteps_and_sigmas(schedule, 10, "edm", rho=1.0)[1][:-1]
    np.testing.assert_allclose(np.diff(linear), np.diff(linear)[0], rtol=1e-9)
    with pytest.raises(ValueError, match=r"rho=0.0 must be > 0"):
        grids.timesteps_and_sigmas(schedule, 10, "edm", rho=0.0)


def test_explicit_sigmas_replace_the_spacing_and_are_checked(schedule):
    train = grids.train_sigmas(schedule)
    levels = np.array([train[-1], 3.0, 0.5, train[0]])
    timesteps, sigmas = grids.timesteps_and_sigmas(schedule, 4, "leading", sigmas=levels)
    np.testing.assert_allclose(sigmas, np.append(levels, 0.0))
    np.testing.assert_allclose(grids.sigma_to_timestep(levels, train), timesteps)
    with pytest.raises(ValueError, match="decrease strictly"):
        grids.timesteps_and_sigmas(schedule, 3, "leading", sigmas=np.array([3.0, 3.0, 1.0]))
    with pytest.raises(ValueError, match="outside the schedule's"):
        grids.timesteps_and_sigmas(schedule, 2, "leading", sigmas=np.array([1e4, 1.0]))
    grid = samplers.make_grid("dpmpp_3m", 4, schedule=schedule, sigmas=levels)
    np.testing.assert_allclose(np.asarray(grid.sigmas), levels, rtol=1e-6)
    with pytest.raises(ValueError, match="num_steps=5 but the given grid has 4 levels"):
        samplers.make_grid("dpmpp_3m", 5, schedule=schedule, sigmas=levels)
