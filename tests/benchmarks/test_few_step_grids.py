"""benchmarks/few_step_grids.py: a searched grid for the analytic mixture beats its start grids,
lands in <dir>/<sampler>_<steps>.json, and few_step.py's 'dir:' rows read it back."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import few_step, few_step_grids
from diffusion import analytic, grid_search, grids, samplers, schedules
from training import grid_files


def test_searched_grid_is_written_and_read_back_by_few_step(tmp_path):
    schedule = schedules.make_schedule("linear", 1000, 1e-4, 0.02)
    means, stds, weights = few_step.make_mixture(8, 4, 0)
    denoise = analytic.gmm_denoiser(means, stds, weights)
    model_fn = jax.jit(analytic.sigma_view_model_fn(denoise, schedule))
    x_T = np.random.default_rng(5).standard_normal((32, 8)).astype(np.float32)
    reference, _ = few_step.reference_endpoints(denoise, x_T, grids.train_sigmas(schedule))
    run = few_step.our_runner(model_fn, "dpmpp_2m")

    result, steps = few_step_grids.optimise_one(
        "dpmpp_2m", 5, schedule, run, jnp.asarray(x_T), reference, ["logsnr", "karras"], 120, 8
    )
    assert steps == 5 and len(result.sigmas) == 5
    assert result.loss < min(result.start_losses.values())  # search quality: test_grid_search

    grid_files.write_grid(str(tmp_path / "dpmpp_2m_5.json"), result.sigmas, sampler="dpmpp_2m")
    grid, spent = few_step.grid_for_budget("dpmpp_2m", 5, schedule, f"dir:{tmp_path}", 8)
    assert spent == 5
    np.testing.assert_allclose(grid.sigmas[:5], result.sigmas, rtol=1e-6)
    ends = np.asarray(run(grid, jnp.asarray(x_T)).samples, np.float64)
    assert abs(grid_search.rms_distance(ends, reference) - result.loss) < 1e-6
    assert samplers.count_evaluations(grid, "dpmpp_2m") == 5
    with pytest.raises(ValueError, match="does not exist"):
        few_step.grid_for_budget("unipc", 5, schedule, f"dir:{tmp_path}", 8)
