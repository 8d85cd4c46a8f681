import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffusion import forward, samplers, schedules
from tests.diffusion.gaussian_oracle import gaussian_model_fn

MEAN, STD = 0.5, 0.3


@pytest.fixture(scope="module")
def schedule():
    return schedules.make_schedule("linear", 1000, 1e-4, 0.02)


def _draw(schedule, sampler, num_steps, prediction="eps", eta=0.0, n=8192, seed=0):
    model_fn = gaussian_model_fn(schedule, MEAN, STD, prediction)
    x_T = jax.random.normal(jax.random.key(seed), (n, 2, 2, 1))
    run = jax.jit(
        lambda x, k: samplers.sample(
            model_fn,
            schedule,
            x,
            k,
            sampler=sampler,
            num_steps=num_steps,
            prediction=prediction,
            eta=eta,
        )
    )
    return np.asarray(run(x_T, jax.random.key(seed + 1)))


@pytest.mark.parametrize(
    "sampler,num_steps,eta,prediction",
    [
        ("ddpm", 1000, 0.0, "eps"),
        ("ddim", 100, 0.0, "eps"),
        # Ancestral steps with the posterior variance lose Var(x0 | x_t) per step (Bao et al.
        # 2022), so eta = 1 needs many steps to reach the data std.
        ("ddim", 500, 1.0, "eps"),
        ("ddim", 100, 0.0, "v"),
        ("ddim", 100, 0.5, "x0"),
    ],
)
def test_exact_gaussian_denoiser_reproduces_data_moments(
    schedule, sampler, num_steps, eta, prediction
):
    x = _draw(schedule, sampler, num_steps, prediction, eta)
    assert abs(x.mean() - MEAN) < 0.01
    # Deterministic DDIM is first order: at 100 steps its std is ~4% low (see the next test).
    assert abs(x.std() - STD) < 0.02


def test_deterministic_ddim_error_is_first_order_in_steps(schedule):
    """Halving the step size halves the std error of the probability-flow discretisation."""
    errors = [abs(_draw(schedule, "ddim", n).std() - STD) for n in (25, 50, 100)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(1.6 < r < 2.5 for r in ratios), (errors, ratios)


def test_ddim_eta1_step_is_the_ddpm_posterior(schedule):
    """Song et al. 2021: eta = 1 gives the posterior q(x_{t-1} | x_t, x0) of Ho et al. eq. 7."""
    t = 600
    x0, eps = jnp.array([[0.4]]), jnp.array([[-1.1]])
    x_t = forward.q_sample(schedule, x0, jnp.array([t]), eps)
    ab, ab_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod[t - 1]
    sigma = samplers.ddim_sigma(ab, ab_prev, jnp.float32(1.0))
    mean = samplers.ddim_step(x0, eps, ab_prev, sigma, jnp.zeros_like(x0))
    post_mean, post_var = forward.q_posterior_mean_variance(schedule, x0, x_t, jnp.array([t]))
    np.testing.assert_allclose(mean, post_mean, rtol=1e-4)
    np.testing.assert_allclose(sigma**2, post_var[0, 0], rtol=1e-4)


def test_deterministic_ddim_is_deterministic_and_ddpm_is_not(schedule):
    a = _draw(schedule, "ddim", 20, n=16, seed=3)
    b = _draw(schedule, "ddim", 20, n=16, seed=3)
    np.testing.assert_array_equal(a, b)
    model_fn = gaussian_model_fn(schedule, MEAN, STD, "eps")
    x_T = jnp.zeros((16, 2, 2, 1))
    run = lambda k: samplers.sample(model_fn, schedule, x_T, k, sampler="ddpm", num_steps=1000)  # noqa: E731
    assert not np.allclose(run(jax.random.key(0)), run(jax.random.key(1)))


@pytest.mark.parametrize("spacing", samplers.SPACINGS)
def test_timesteps_are_decreasing_and_in_range(spacing):
    steps = samplers.timesteps(1000, 10, spacing)
    assert steps.shape == (10,) and np.all(np.diff(steps) < 0)
    assert steps.min() >= 0 and steps.max() <= 999
    assert list(samplers.timesteps(1000, 1000, spacing)) == list(range(999, -1, -1))


def test_spacings_match_lin_et_al_table2():
    np.testing.assert_array_equal(samplers.timesteps(1000, 10, "leading"), np.arange(900, -1, -100))
    np.testing.assert_array_equal(samplers.timesteps(1000, 10, "trailing"), np.arange(999, 0, -100))
    np.testing.assert_array_equal(
        samplers.timesteps(1000, 10, "linspace"), np.round(np.linspace(0, 999, 10))[::-1]
    )


def test_trajectory_has_one_state_per_step(schedule):
    model_fn = gaussian_model_fn(schedule, MEAN, STD, "eps")
    x_T = jnp.ones((2, 2, 2, 1))
    x0, traj = samplers.sample(
        model_fn, schedule, x_T, jax.random.key(0), num_steps=7, return_trajectory=True
    )
    assert traj.shape == (7, 2, 2, 2, 1)
    np.testing.assert_array_equal(traj[-1], x0)


def test_batch_sharded_sampling_equals_single_device(schedule):
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    model_fn = gaussian_model_fn(schedule, MEAN, STD, "eps")
    x_T = jax.random.normal(jax.random.key(0), (16, 2, 2, 1))

    def run(x, key):
        return samplers.sample(model_fn, schedule, x, key, sampler="ddim", num_steps=10, eta=1.0)

    expected = jax.jit(run)(x_T, jax.random.key(1))
    sharded = jax.jit(run, in_shardings=(sharding, None), out_shardings=sharding)(
        jax.device_put(x_T, sharding), jax.random.key(1)
    )
    assert sharded.sharding.spec == PartitionSpec("data")
    np.testing.assert_allclose(sharded, expected, rtol=1e-5, atol=1e-6)


def test_bad_sampler_options_name_the_field(schedule):
    x = jnp.zeros((1, 2, 2, 1))
    with pytest.raises(ValueError, match=r"sampler\.name='plms'.*ddpm, ddim"):
        samplers.sample(lambda x, t: x, schedule, x, jax.random.key(0), sampler="plms")
    with pytest.raises(ValueError, match=r"sampler\.num_steps=0"):
        samplers.sample(lambda x, t: x, schedule, x, jax.random.key(0), num_steps=0)
