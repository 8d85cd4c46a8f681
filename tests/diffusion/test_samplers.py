import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffusion import samplers, schedules
from diffusion.analytic import (
    gaussian_model_fn,
    mixture_model_fn,
    mixture_samples,
)

MEAN, STD = 0.5, 0.3
FIRST_ORDER = ("ddim", "euler")
HIGHER_ORDER = ("heun", "dpmpp_2m", "lms", "unipc")


@pytest.fixture(scope="module")
def schedule():
    return schedules.make_schedule("linear", 1000, 1e-4, 0.02)


def _draw(
    schedule,
    sampler,
    num_steps,
    prediction="eps",
    eta=0.0,
    n=8192,
    seed=0,
    spacing="trailing",
    model_fn=None,
):
    model_fn = model_fn or gaussian_model_fn(schedule, MEAN, STD, prediction)
    x_T = jax.random.normal(jax.random.key(seed), (n, 4))
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
            spacing=spacing,
        )
    )
    out = run(x_T, jax.random.key(seed + 1))
    return np.asarray(out.samples), int(out.nfe)


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_every_sampler_reproduces_gaussian_moments(schedule, sampler):
    steps = 1000 if sampler == "ddpm" else 100
    x, nfe = _draw(schedule, sampler, steps)
    assert abs(x.mean() - MEAN) < 0.01
    # First-order samplers are ~4% off at 100 steps (see the convergence tests below).
    tolerance = {"ddim": 0.02, "euler": 0.02, "euler_ancestral": 0.04, "ddpm": 0.01}
    assert abs(x.std() - STD) < tolerance.get(sampler, 0.01), x.std()
    assert nfe == (2 * steps - 1 if sampler == "heun" else steps)


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun"])
def test_samplers_convert_any_parameterisation(schedule, sampler, prediction):
    x, _ = _draw(schedule, sampler, 50, prediction=prediction)
    reference, _ = _draw(schedule, sampler, 50, prediction="eps")
    np.testing.assert_allclose(x, reference, atol=2e-3)


def _std_error(schedule, sampler, steps):
    return abs(_draw(schedule, sampler, steps)[0].std() - STD)


@pytest.mark.parametrize("sampler", FIRST_ORDER)
def test_first_order_error_halves_when_steps_double(schedule, sampler):
    ratio = _std_error(schedule, sampler, 20) / _std_error(schedule, sampler, 40)
    assert 1.6 < ratio < 2.6, ratio


@pytest.mark.parametrize("sampler", HIGHER_ORDER)
def test_higher_order_error_falls_faster(schedule, sampler):
    ratio = _std_error(schedule, sampler, 20) / _std_error(schedule, sampler, 40)
    assert ratio > 2.9, ratio
    # And at equal NFE (Heun pays two per step) they beat first-order Euler.
    euler_steps = 80 if sampler == "heun" else 40
    assert _std_error(schedule, sampler, 40) < 0.7 * _std_error(schedule, "euler", euler_steps)


MIXTURE = ([-0.6, 0.5], [0.15, 0.25], [0.3, 0.7])


@pytest.mark.parametrize(
    "sampler",
    ["ddpm", "ddim", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "lms", "unipc"],
)
def test_gaussian_mixture_moments_and_mode_weights(schedule, sampler):
    """A bimodal target: the samplers must get the modes' weights, not just mean and std."""
    model_fn = mixture_model_fn(schedule, *MIXTURE)
    steps = 1000 if sampler == "ddpm" else 100
    x, _ = _draw(schedule, sampler, steps, model_fn=model_fn, n=16384)
    x = x.ravel()
    exact = mixture_samples(*MIXTURE, n=200_000)
    assert abs(x.mean() - exact.mean()) < 0.01
    assert abs(x.std() - exact.std()) < (0.03 if sampler == "euler_ancestral" else 0.015)
    assert abs(np.mean(x < 0) - np.mean(exact < 0)) < 0.01


def test_deterministic_samplers_are_deterministic_and_ancestral_ones_are_not(schedule):
    a, _ = _draw(schedule, "dpmpp_2m", 10, n=16, seed=3)
    b, _ = _draw(schedule, "dpmpp_2m", 10, n=16, seed=3)
    np.testing.assert_array_equal(a, b)
    model_fn = gaussian_model_fn(schedule, MEAN, STD, "eps")
    x_T = jnp.zeros((16, 4))
    for name in ("ddpm", "euler_ancestral", "dpmpp_2m_sde"):
        run = lambda k, name=name: (
            samplers.sample(model_fn, schedule, x_T, k, sampler=name, num_steps=20).samples
        )  # noqa: E731
        assert not np.allclose(run(jax.random.key(0)), run(jax.random.key(1))), name


def test_trajectory_has_one_state_per_step(schedule):
    model_fn = gaussian_model_fn(schedule, MEAN, STD, "eps")
    out = samplers.sample(
        model_fn, schedule, jnp.ones((2, 4)), jax.random.key(0), num_steps=7, return_trajectory=True
    )
    assert out.trajectory.shape == (7, 2, 4)
    np.testing.assert_array_equal(out.trajectory[-1], out.samples)


def test_padding_gives_identical_samples_and_one_compile_for_all_step_counts(schedule):
    model_fn = gaussian_model_fn(schedule, MEAN, STD, "eps")
    x_T = jax.random.normal(jax.random.key(0), (8, 4))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(grid, x, key, eta):
        denoise = samplers.make_denoiser(model_fn, "eps")
        return samplers.sample_on_grid(denoise, grid, x, key, sampler="ddim", eta=eta)

    from diffusion import grids

    for steps in (5, 17, 40):
        for eta in (0.0, 0.5):
            padded = run(
                grids.make_grid(schedule, steps, "trailing", max_steps=40),
                x_T,
                jax.random.key(1),
                eta,
            )
            exact = samplers.sample(
                model_fn,
                schedule,
                x_T,
                jax.random.key(1),
                num_steps=steps,
                spacing="trailing",
                eta=eta,
            )
            np.testing.assert_allclose(padded.samples, exact.samples, rtol=1e-6, atol=1e-6)
            assert int(padded.nfe) == steps


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "unipc"])
def test_batch_sharded_sampling_equals_single_device(schedule, sampler):
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    model_fn = gaussian_model_fn(schedule, MEAN, STD, "eps")
    x_T = jax.random.normal(jax.random.key(0), (16, 4))

    def run(x, key):
        return samplers.sample(model_fn, schedule, x, key, sampler=sampler, num_steps=10).samples

    expected = jax.jit(run)(x_T, jax.random.key(1))
    sharded = jax.jit(run, in_shardings=(sharding, None), out_shardings=sharding)(
        jax.device_put(x_T, sharding), jax.random.key(1)
    )
    assert sharded.sharding.spec == PartitionSpec("data")
    np.testing.assert_allclose(sharded, expected, rtol=1e-5, atol=1e-6)


def test_bad_sampler_options_name_the_field(schedule):
    x = jnp.zeros((1, 4))
    with pytest.raises(ValueError, match=r"sampler\.name='plms'.*ddpm, ddim, euler"):
        samplers.sample(lambda x, t: x, schedule, x, jax.random.key(0), sampler="plms")
    with pytest.raises(ValueError, match=r"sampler\.num_steps=0"):
        samplers.sample(lambda x, t: x, schedule, x, jax.random.key(0), num_steps=0)
    with pytest.raises(
        ValueError, match=r"sampler\.spacing='uniform'.*linspace, leading, trailing, karras"
    ):
        samplers.sample(lambda x, t: x, schedule, x, jax.random.key(0), spacing="uniform")
