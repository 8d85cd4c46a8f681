import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffusion import samplers, schedules, solvers
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

    for steps in (5, 17, 40):
        for eta in (0.0, 0.5):
            padded = run(
                samplers.make_grid(
                    "ddim", steps, schedule=schedule, spacing="trailing", max_steps=40
                ),
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


def test_bad_sampler_options_are_refused_without_config_paths(schedule):
    x = jnp.zeros((1, 4))
    with pytest.raises(ValueError, match=r"^sampler='plms'.*ddpm, ddim, euler"):
        samplers.sample(lambda x, t: x, schedule, x, jax.random.key(0), sampler="plms")
    with pytest.raises(ValueError, match=r"^num_steps=0"):
        samplers.sample(lambda x, t: x, schedule, x, jax.random.key(0), num_steps=0)
    with pytest.raises(
        ValueError, match=r"^spacing='uniform'.*linspace, leading, trailing, karras"
    ):
        samplers.sample(lambda x, t: x, schedule, x, jax.random.key(0), spacing="uniform")


# --- flow models: the same driver and steps (registry entries with "flow") --------------------

FLOW_MEAN, FLOW_STD = 0.5, 0.3


def _exact_velocity(x, t_scaled):
    """E[eps - x0 | x_t] for x0 ~ N(MEAN, STD^2): x_t ~ N((1-t) MEAN, (1-t)^2 STD^2 + t^2)."""
    t = (t_scaled / 1000.0)[:, None]
    var = (1 - t) ** 2 * FLOW_STD**2 + t**2
    centred = x - (1 - t) * FLOW_MEAN
    x0 = FLOW_MEAN + (1 - t) * FLOW_STD**2 * centred / var
    eps = t * centred / var
    return eps - x0


def _flow_sample(x_T, sampler, steps, shift=1.0, **kwargs):
    return samplers.sample(
        _exact_velocity,
        None,
        x_T,
        jax.random.key(0),
        sampler=sampler,
        num_steps=steps,
        prediction="velocity",
        process="flow",
        flow_shift=shift,
        **kwargs,
    )


@pytest.mark.parametrize("sampler,steps,nfe", [("euler", 50, 50), ("heun", 25, 49)])
def test_flow_ode_reproduces_gaussian_moments(sampler, steps, nfe):
    x_T = jax.random.normal(jax.random.key(0), (16384, 2))
    out = _flow_sample(x_T, sampler, steps)
    # Euler is first order: at 50 steps its std is ~4% low (see the order test below).
    assert abs(float(out.samples.mean()) - FLOW_MEAN) < 0.01
    assert abs(float(out.samples.std()) - FLOW_STD) < 0.02
    assert int(out.nfe) == nfe


def test_flow_heun_is_second_order_and_euler_first():
    x_T = jax.random.normal(jax.random.key(0), (8192, 2))
    err = {
        (s, n): abs(float(_flow_sample(x_T, s, n).samples.std()) - FLOW_STD)
        for s in ("euler", "heun")
        for n in (5, 10)
    }
    assert 1.5 < err[("euler", 5)] / err[("euler", 10)] < 2.6
    assert err[("heun", 5)] / err[("heun", 10)] > 3.0


def test_flow_step_count_is_the_grids_not_a_closure():
    """A padded flow grid runs exactly the steps asked for, all counts in one compile (the
    earlier flow path closed over the config's step count and ignored the argument)."""
    x_T = jax.random.normal(jax.random.key(0), (256, 2))
    denoise = samplers.make_denoiser(_exact_velocity, "velocity", process="flow")

    @jax.jit
    def chain(grid):
        return samplers.sample_on_grid(
            denoise, grid, x_T, jax.random.key(0), sampler="euler", process="flow"
        )

    outs = {
        n: chain(samplers.make_grid("euler", n, process="flow", max_steps=20)) for n in (3, 7, 20)
    }
    assert [int(outs[n].nfe) for n in (3, 7, 20)] == [3, 7, 20]
    assert chain._cache_size() == 1
    for n in (3, 7):
        exact = _flow_sample(x_T, "euler", n).samples
        np.testing.assert_allclose(outs[n].samples, exact, rtol=1e-5, atol=1e-6)
    assert not np.allclose(outs[3].samples, outs[20].samples, atol=1e-3)


def test_flow_matches_diffusers_flow_match_euler():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from diffusion import processes

    steps, shift = 12, 3.0
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sigmas = processes.flow_times(steps, shift)
    scheduler.set_timesteps(sigmas=list(sigmas[:-1]))
    scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float32)
    scheduler.timesteps = torch.tensor(sigmas[:-1] * 1000, dtype=torch.float32)
    x_T = np.asarray(jax.random.normal(jax.random.key(0), (4, 3)))
    sample = torch.tensor(x_T)
    for t in scheduler.timesteps:
        v = torch.tensor(
            np.asarray(_exact_velocity(jnp.asarray(sample.numpy()), jnp.full((4,), float(t))))
        )
        sample = scheduler.step(v, t, sample).prev_sample
    ours = _flow_sample(jnp.asarray(x_T), "euler", steps, shift).samples
    np.testing.assert_allclose(np.asarray(ours), sample.numpy(), rtol=1e-5, atol=1e-6)


def test_samplers_that_cannot_integrate_flow_are_refused():
    x = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match=r"sampler='unipc' cannot integrate the 'flow' process"):
        _flow_sample(x, "unipc", 10)
    assert set(solvers.names_for("flow")) == {"euler", "heun", "ipndm"}
    assert set(solvers.names_for("ddpm")) == set(solvers.SAMPLERS)


def test_every_registry_entry_is_complete():
    """One entry per sampler: its step runs on a grid built for it, with the state it declares,
    and the driver counts the evaluations it declares."""
    schedule = schedules.make_schedule("linear", 100, 1e-4, 0.02)
    model_fn = gaussian_model_fn(schedule, 0.5, 0.3, "eps")
    x_T = jax.random.normal(jax.random.key(0), (8, 2))
    for name, spec in solvers.SAMPLERS.items():
        out = samplers.sample(model_fn, schedule, x_T, jax.random.key(1), sampler=name, num_steps=4)
        grid = samplers.make_grid(name, 4, schedule=schedule)
        expected = sum(int(spec.evaluations({"sigma_next": s})) for s in grid.sigmas_next)
        assert int(out.nfe) == expected, name
        assert bool(jnp.all(jnp.isfinite(out.samples))), name
        assert set(grid.extras) == set(
            spec.grid_rows(np.linspace(5.0, 0.0, 5), 4) if spec.grid_rows else {}
        )


@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpmpp_2m"])
def test_count_evaluations_equals_what_the_chain_counts_padding_excluded(schedule, sampler):
    model_fn = gaussian_model_fn(schedule, MEAN, STD, "eps")
    x_T = jax.random.normal(jax.random.key(0), (4, 4))
    for steps in (3, 10):
        grid = samplers.make_grid(
            sampler, steps, schedule=schedule, spacing="trailing", max_steps=12
        )
        denoise = samplers.make_denoiser(model_fn, "eps")
        ran = samplers.sample_on_grid(denoise, grid, x_T, jax.random.key(1), sampler=sampler)
        counted = samplers.count_evaluations(grid, sampler)
        assert counted == int(ran.nfe)
        assert counted == (2 * steps - 1 if sampler == "heun" else steps)
