"""benchmarks/few_step.py and few_step_diffusers.py: the NFE budgeting, the sampler filter, and
diffusers driven through the exact model giving our DDIM's endpoints."""

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import few_step, few_step_diffusers
from diffusion import analytic, samplers, schedules


@pytest.fixture(scope="module")
def schedule():
    return schedules.make_schedule("linear", 1000, 1e-4, 0.02)


def test_deterministic_samplers_leave_out_the_noisy_ones():
    names = few_step.deterministic_samplers()
    assert {"ddim", "euler", "heun", "dpmpp_2m", "lms", "unipc"} <= set(names)
    assert not any(n in ("ddpm", "euler_ancestral") or "sde" in n for n in names)


@pytest.mark.parametrize(("sampler", "nfe", "spent"), [("ddim", 10, 10), ("heun", 10, 9)])
def test_grid_for_budget_spends_at_most_the_budget(schedule, sampler, nfe, spent):
    grid, got = few_step.grid_for_budget(sampler, nfe, schedule, "karras", max_steps=16)
    assert got == spent == samplers.count_evaluations(grid, sampler)
    assert grid.max_steps == 16


def test_grid_for_budget_passes_on_a_refused_spacing(schedule):
    with pytest.raises(ValueError, match="not known"):
        few_step.grid_for_budget("ddim", 5, schedule, "no_such_spacing", max_steps=8)


def test_rms_error_is_per_sample_then_averaged():
    reference = np.zeros((2, 4))
    endpoints = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]])
    assert few_step.rms_error(endpoints, reference) == pytest.approx((1.0 + 1.0) / 2)


def test_singlestep_takes_linspace_only_and_placements_follow_the_class():
    pytest.importorskip("diffusers")
    found = {
        (label, spacing, placement)
        for label, spacing, placement, *_ in few_step_diffusers.settings()
    }
    assert {s for label, s, _ in found if label == "DPM++2S"} == {"linspace"}
    assert ("DPM++2M", "trailing", "use_lu_lambdas") in found
    assert not any(label == "DDIM" and placement for label, _, placement in found)


def test_diffusers_ddim_through_the_exact_model_matches_ours(schedule):
    """The same exact model drives both sides: DDIM on the same leading grid agrees."""
    pytest.importorskip("diffusers")
    means, stds, weights = few_step.make_mixture(8, 3, 0)
    model_fn = analytic.sigma_view_model_fn(analytic.gmm_denoiser(means, stds, weights), schedule)
    x_T = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    options = {"clip_sample": False, "set_alpha_to_one": True, "timestep_spacing": "leading"}
    theirs, calls = few_step_diffusers.endpoints(
        model_fn, "DDIMScheduler", options, schedule, x_T, 6
    )
    grid, spent = few_step.grid_for_budget("ddim", 6, schedule, "leading", max_steps=6)
    ours = few_step.our_runner(model_fn, "ddim")(grid, jnp.asarray(x_T)).samples
    assert calls == spent == 6
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
