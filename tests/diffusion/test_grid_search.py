"""diffusion/grid_search.py on exact Gaussian-mixture denoisers: the searched grid beats every
fixed spacing on the objective it minimises and on a held-out batch, finds the optimum a dense
scan finds when one level is free, and its parametrisation round-trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, grid_search, grids, samplers, schedules

RNG = np.random.default_rng(3)
MEANS = RNG.uniform(-1.0, 1.0, (4, 4))
STDS = np.full(4, 0.08)
WEIGHTS = np.full(4, 0.25)


@pytest.fixture(scope="module")
def schedule():
    return schedules.make_schedule("linear", 1000, 1e-4, 0.02)


def _chain(schedule, sampler, denoise, x_T):
    """active sigmas -> endpoints, one compile for every grid (the grid is an argument)."""
    run = jax.jit(
        lambda grid: (
            samplers.sample_on_grid(
                lambda x, sigma, t: denoise(x, sigma), grid, x_T, jax.random.key(0), sampler=sampler
            ).samples
        )
    )

    def endpoints(sigmas):
        grid = samplers.make_grid(sampler, len(sigmas), schedule=schedule, sigmas=sigmas)
        return np.asarray(run(grid))

    return endpoints


def _reference(denoise, x_T, sigma_max, sigma_min):
    state = np.asarray(x_T, np.float64) * np.sqrt(1.0 + sigma_max**2)
    return analytic.pf_ode_endpoint(denoise, state, sigma_max, 1e-3 * sigma_min, 400)


def _fixed_grid_losses(schedule, sampler, num_steps, endpoints, reference):
    losses = {}
    for spacing in grids.SPACINGS:
        grid = samplers.make_grid(sampler, num_steps, schedule=schedule, spacing=spacing)
        sigmas = np.asarray(grid.sigmas, np.float64)[:num_steps]
        sigmas = np.clip(sigmas, *grids.train_sigmas(schedule)[[0, -1]])
        losses[spacing] = grid_search.rms_distance(endpoints(sigmas), reference)
    return losses


def test_searched_grid_beats_every_fixed_spacing_on_calibration_and_held_out(schedule):
    denoise = analytic.gmm_denoiser(MEANS, STDS, WEIGHTS)
    sigma_min, sigma_max = (float(s) for s in grids.train_sigmas(schedule)[[0, -1]])
    calibration, held_out = (jax.random.normal(jax.random.key(k), (256, 4)) for k in (1, 2))
    num_steps, sampler = 5, "dpmpp_2m"
    chain = _chain(schedule, sampler, denoise, calibration)
    reference = _reference(denoise, calibration, sigma_max, sigma_min)
    starts = {
        "logsnr": grids.log_snr_sigmas(sigma_min, sigma_max, num_steps),
        "karras": grids.karras_sigmas(sigma_min, sigma_max, num_steps),
    }
    result = grid_search.search_grid(chain, reference, starts, sigma_min, sigma_max, 240)
    fixed = _fixed_grid_losses(schedule, sampler, num_steps, chain, reference)
    assert result.loss < 0.8 * min(fixed.values()), (result.loss, fixed)
    assert np.all(np.diff(result.sigmas) < 0) and result.sigmas[0] == pytest.approx(sigma_max)

    held_chain = _chain(schedule, sampler, denoise, held_out)
    held_reference = _reference(denoise, held_out, sigma_max, sigma_min)
    held_fixed = _fixed_grid_losses(schedule, sampler, num_steps, held_chain, held_reference)
    held = grid_search.rms_distance(held_chain(result.sigmas), held_reference)
    assert held < 0.8 * min(held_fixed.values()), (held, held_fixed)


def test_one_free_level_lands_on_the_dense_scan_optimum(schedule):
    """Two DDIM steps: the only choice is the middle level; scan it densely."""
    denoise = analytic.gmm_denoiser(MEANS[:1], np.array([0.3]), np.array([1.0]))
    sigma_min, sigma_max = (float(s) for s in grids.train_sigmas(schedule)[[0, -1]])
    x_T = jax.random.normal(jax.random.key(4), (128, 4))
    chain = _chain(schedule, "ddim", denoise, x_T)
    reference = _reference(denoise, x_T, sigma_max, sigma_min)
    middles = np.exp(np.linspace(np.log(sigma_min * 1.01), np.log(sigma_max * 0.99), 600))
    scan = [grid_search.rms_distance(chain(np.array([sigma_max, m])), reference) for m in middles]
    start = {"logsnr": grids.log_snr_sigmas(sigma_min, sigma_max, 2) * np.array([1.0, 1.2])}
    result = grid_search.search_grid(chain, reference, start, sigma_min, sigma_max, 200)
    assert result.loss <= min(scan) * 1.001, (result.loss, min(scan))
    best = middles[int(np.argmin(scan))]
    assert abs(np.log(result.sigmas[1] / best)) < 0.02, (result.sigmas, best)


def test_weights_and_sigmas_round_trip():
    sigmas = np.array([150.0, 20.0, 3.0, 0.4, 0.05])
    logits = grid_search.weights_from_sigmas(sigmas, 0.01, 150.0)
    np.testing.assert_allclose(grid_search.sigmas_from_weights(logits, 0.01, 150.0), sigmas)
    with pytest.raises(ValueError, match="not a decreasing grid"):
        grid_search.weights_from_sigmas(np.array([150.0, 3.0, 20.0]), 0.01, 150.0)
    with pytest.raises(ValueError, match="share one length"):
        grid_search.search_grid(
            lambda s: jnp.zeros(2), np.zeros(2), {"a": sigmas, "b": sigmas[:3]}, 0.01, 150.0
        )


def test_search_runs_at_most_its_budget_of_chains():
    calls = []
    target = np.log([10.0, 3.0, 1.0, 0.2])

    def endpoints(sigmas):
        calls.append(sigmas)
        return np.log(sigmas)[None, :]

    starts = {"even": np.exp(np.linspace(np.log(10.0), np.log(0.05), 4))}
    result = grid_search.search_grid(endpoints, target[None, :], starts, 0.01, 10.0, 17)
    assert len(calls) == result.evaluations == 17
    assert result.loss < result.start_losses["even"]
