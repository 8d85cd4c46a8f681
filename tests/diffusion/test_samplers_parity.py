"""Step-for-step parity of every sampler with diffusers' PyTorch schedulers (test-only deps).

Both sides get the same schedule (diffusers' alphas_cumprod is overwritten with ours), the same
model function, the same initial noise and, for stochastic samplers, the same injected noise.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import grids, multistep, samplers, scheduler_settings, schedules, solvers
from tests.diffusion import sd_scheduler_configs

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

T = 1000
SHAPE = (4, 3, 3, 2)


def _jax_model(x, t):
    """A smooth, nonlinear stand-in network (eps prediction)."""
    scale = (t / T).reshape((-1,) + (1,) * (x.ndim - 1))
    return 0.5 * jnp.tanh(x) + 0.1 * x * scale + 0.05 * scale


def _torch_model(x, t):
    scale = float(t) / T
    return 0.5 * torch.tanh(x) + 0.1 * x * scale + 0.05 * scale


# sampler -> (diffusers class, kwargs choosing its algorithm, state is sigma-scaled, uses
# injected noise)
REFERENCES = {
    "ddpm": ("DDPMScheduler", {"variance_type": "fixed_small"}, False, True),
    "ddim": ("DDIMScheduler", {}, False, True),
    "euler": ("EulerDiscreteScheduler", {}, True, False),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, True, True),
    "heun": ("HeunDiscreteScheduler", {}, True, False),
    "lms": ("LMSDiscreteScheduler", {}, True, False),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        False,
        False,
    ),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        False,
        True,
    ),
    "unipc": (
        "UniPCMultistepScheduler",
        {"solver_type": "bh2", "solver_order": 2, "predict_x0": True},
        False,
        False,
    ),
}
# Third-order methods diffusers has too. dpmpp_3m and dpmpp_3m_sde are not here: they weight the
# second divided difference so that quadratics integrate exactly, diffusers does not (see
# diffusion/multistep.py); tests/diffusion/test_multistep.py checks them against the integral.
NEW_REFERENCES = {
    "dpmpp_3m_diffusers": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 3},
        False,
        False,
    ),
    "unipc_bh1": (
        "UniPCMultistepScheduler",
        {"solver_type": "bh1", "solver_order": 2, "predict_x0": True},
        False,
        False,
    ),
    "unipc_3": (
        "UniPCMultistepScheduler",
        {"solver_type": "bh2", "solver_order": 3, "predict_x0": True},
        False,
        False,
    ),
    "unipc_3_bh1": (
        "UniPCMultistepScheduler",
        {"solver_type": "bh1", "solver_order": 3, "predict_x0": True},
        False,
        False,
    ),
    # Compared on diffusers' own grid only (test_deis_matches_diffusers_on_its_grid).
    "deis": ("DEISMultistepScheduler", {"solver_order": 3}, False, False),
}
SD_SAMPLERS = tuple(REFERENCES)  # the Stable Diffusion settings cases keep to the first wave
REFERENCES = REFERENCES | NEW_REFERENCES
# Settings of the plain-schedule cases that differ from the classes' defaults.
PLAIN_SETTINGS = {
    "ddpm": {"clip_sample": False},
    "ddim": {"clip_sample": False, "set_alpha_to_one": True},
}


def _reference(sampler, schedule, num_steps, spacing, x_T, noises, eta):
    class_name, kwargs, _, _ = REFERENCES[sampler]
    extra = {"use_karras_sigmas": True} if spacing == "karras" else {"timestep_spacing": spacing}
    scheduler = getattr(diffusers, class_name)(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        steps_offset=0,
        **kwargs,
        **PLAIN_SETTINGS.get(sampler, {}),
        **extra,
    )
    scheduler.alphas_cumprod = torch.tensor(
        np.asarray(schedule.alphas_cumprod), dtype=torch.float32
    )
    timesteps, sigmas = grids.timesteps_and_sigmas(
        schedule, num_steps, spacing, skip_zero=solvers.SAMPLERS[sampler].skip_zero
    )
    scheduler.set_timesteps(num_steps)
    _check_grid(scheduler, sampler, timesteps, sigmas, karras=spacing == "karras")
    return _run_reference(scheduler, sampler, sigmas, x_T, noises, eta)


def _check_grid(scheduler, sampler, timesteps, sigmas, karras=False):
    """diffusers' own grid (timesteps, and sigmas where it keeps them) must equal ours."""
    class_name, _, sigma_scaled, _ = REFERENCES[sampler]
    if class_name in (
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
    ):
        np.testing.assert_allclose(scheduler.sigmas.numpy(), sigmas, rtol=1e-5, atol=1e-7)
        if karras:  # ... except that they round Karras timesteps for the model
            scheduler.timesteps = torch.tensor(timesteps, dtype=torch.float32)
        np.testing.assert_allclose(scheduler.timesteps.numpy(), timesteps, rtol=1e-6)
    elif sigma_scaled:
        ref = scheduler.sigmas.numpy()
        if class_name == "HeunDiscreteScheduler":
            ref = np.append(ref[0], ref[1::2])
        np.testing.assert_allclose(ref, sigmas, rtol=1e-5)  # the grids themselves agree
    else:  # DDIM / DDPM step between their integer timesteps
        np.testing.assert_array_equal(scheduler.timesteps.numpy(), timesteps)


def _run_reference(scheduler, sampler, sigmas, x_T, noises, eta):
    """diffusers' sampling loop from x_T with our per-step noise; the state after every step."""
    class_name, _, sigma_scaled, stochastic = REFERENCES[sampler]
    module = importlib.import_module(type(scheduler).__module__)
    step_index = {"i": 0}
    if stochastic and hasattr(module, "randn_tensor"):
        module_randn = module.randn_tensor
        module.randn_tensor = lambda shape, **kw: torch.tensor(noises[step_index["i"]])
    sample = torch.tensor(x_T * (np.sqrt(1.0 + sigmas[0] ** 2) if sigma_scaled else 1.0))
    states = []
    try:
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(sample, t)
            eps = _torch_model(model_in, t)
            step_kwargs = {}
            if class_name == "DDIMScheduler":
                step_kwargs = {"eta": eta, "variance_noise": torch.tensor(noises[step_index["i"]])}
            sample = scheduler.step(eps, t, sample, **step_kwargs).prev_sample
            if class_name == "HeunDiscreteScheduler" and not scheduler.state_in_first_order:
                continue
            states.append(sample.numpy())
            step_index["i"] += 1
    finally:
        if stochastic and hasattr(module, "randn_tensor"):
            module.randn_tensor = module_randn
    if len(states) == len(sigmas) - 2:  # Heun's last (Euler) step leaves it "in second order"
        states.append(sample.numpy())
    states = np.stack(states)
    if sigma_scaled:  # to the VP scale our trajectories use
        states = states / np.sqrt(1.0 + sigmas[1:] ** 2).reshape((-1,) + (1,) * len(SHAPE))
    return states


def _noises(key, num_steps):
    return [
        np.asarray(jax.random.normal(jax.random.fold_in(key, i), SHAPE)) for i in range(num_steps)
    ]


def _assert_trajectories_match(ours, reference):
    """Every step's state to 1e-5 of that step's largest magnitude."""
    trajectory = np.asarray(ours.trajectory)
    assert trajectory.shape == reference.shape
    scale = np.max(np.abs(reference), axis=tuple(range(1, reference.ndim)), keepdims=True)
    np.testing.assert_array_less(np.abs(trajectory - reference) / scale, 1e-5)
    np.testing.assert_array_less(np.abs(np.asarray(ours.samples) - reference[-1]) / scale[-1], 1e-5)


CASES = [
    ("ddpm", 20, "leading"),
    ("ddpm", 50, "trailing"),
    ("ddim", 10, "leading"),
    ("ddim", 25, "trailing"),
    ("euler", 10, "linspace"),
    ("euler", 30, "trailing"),
    ("euler", 12, "karras"),
    ("euler_ancestral", 15, "linspace"),
    ("euler_ancestral", 20, "leading"),
    ("heun", 8, "linspace"),
    ("heun", 15, "karras"),
    ("lms", 12, "linspace"),
    ("lms", 25, "karras"),
    ("dpmpp_2m", 10, "trailing"),
    ("dpmpp_2m", 20, "karras"),
    ("dpmpp_2m", 16, "linspace"),
    ("dpmpp_2m", 10, "leading"),
    ("dpmpp_2m_sde", 12, "trailing"),
    ("dpmpp_2m_sde", 20, "karras"),
    ("dpmpp_2m_sde", 15, "leading"),
    ("unipc", 10, "trailing"),
    ("unipc", 20, "karras"),
    ("unipc", 16, "linspace"),
    ("unipc", 12, "leading"),
    ("dpmpp_3m_diffusers", 10, "trailing"),
    ("dpmpp_3m_diffusers", 20, "karras"),
    ("dpmpp_3m_diffusers", 16, "leading"),
    ("unipc_bh1", 10, "trailing"),
    ("unipc_3", 10, "trailing"),
    ("unipc_3", 20, "karras"),
    ("unipc_3", 6, "linspace"),
    ("unipc_3_bh1", 12, "leading"),
    ("unipc_3_bh1", 25, "trailing"),
]


@pytest.mark.parametrize("sampler,num_steps,spacing", CASES)
def test_trajectory_matches_diffusers(sampler, num_steps, spacing):
    schedule = schedules.make_schedule("linear", T, 1e-4, 0.02)
    x_T = np.asarray(jax.random.normal(jax.random.key(0), SHAPE))
    key = jax.random.key(1)
    noises = _noises(key, num_steps)
    eta = 0.7 if sampler == "ddim" else 0.0
    ours = samplers.sample(
        _jax_model,
        schedule,
        jnp.asarray(x_T),
        key,
        sampler=sampler,
        num_steps=num_steps,
        spacing=spacing,
        eta=eta,
        return_trajectory=True,
    )
    reference = _reference(sampler, schedule, num_steps, spacing, x_T, noises, eta)
    if sampler.endswith("bh1"):
        # diffusers' bh1 UniPC multiplies B(h) = -h = -inf by a zero correction on the final
        # step onto sigma = 0 and returns NaN (diffusers 0.42); ours lands on the x0 estimate.
        assert np.isnan(reference[-1]).all()
        trajectory = np.asarray(ours.trajectory)
        assert np.isfinite(trajectory[-1]).all()
        scale = np.max(np.abs(reference[:-1]), axis=tuple(range(1, reference.ndim)), keepdims=True)
        np.testing.assert_array_less(np.abs(trajectory[:-1] - reference[:-1]) / scale, 1e-5)
        return
    _assert_trajectories_match(ours, reference)


@pytest.mark.parametrize("num_steps,spacing", [(10, "trailing"), (20, "linspace"), (12, "leading")])
def test_deis_matches_diffusers_on_its_grid(num_steps, spacing):
    """diffusers' DEIS ends at the schedule's first level sigma_0 (ours at sigma = 0): on that
    grid our DEIS weights step as its third-order log-rho multistep does."""
    schedule = schedules.make_schedule("linear", T, 1e-4, 0.02)
    timesteps, sigmas = grids.timesteps_and_sigmas(
        schedule, num_steps, spacing, skip_zero=True, end_at_zero=False
    )
    rows = {"lms_coeffs": multistep.deis_coefficients(sigmas, width=solvers.LMS_MAX_ORDER)}
    grid = grids.pad_grid(timesteps, sigmas, extras=rows)
    x_T = np.asarray(jax.random.normal(jax.random.key(0), SHAPE))
    denoise = samplers.make_denoiser(_jax_model)
    ours = samplers.sample_on_grid(
        denoise, grid, jnp.asarray(x_T), jax.random.key(1), sampler="deis", return_trajectory=True
    )
    scheduler = diffusers.DEISMultistepScheduler(
        num_train_timesteps=T, solver_order=3, timestep_spacing=spacing, steps_offset=0
    )
    scheduler.alphas_cumprod = torch.tensor(
        np.asarray(schedule.alphas_cumprod), dtype=torch.float32
    )
    scheduler.set_timesteps(num_steps)
    _check_grid(scheduler, "deis", timesteps, sigmas)
    reference = _run_reference(scheduler, "deis", sigmas, x_T, [], 0.0)
    _assert_trajectories_match(ours, reference)


# Stable Diffusion's own scheduler files, read by diffusion/scheduler_settings.py: our sampler with
# the imported settings against diffusers' `XScheduler.from_config(pipe.scheduler.config)`, the
# schedule included (diffusers builds its own betas here).
SD_CASES = [
    (sampler, config, num_steps)
    for config, step_counts in (("sd15", (10, 25)), ("sd21", (10, 25)), ("sd15_leading", (10,)))
    for sampler in SD_SAMPLERS
    for num_steps in step_counts
]


def _sd_reference(sampler, config, settings, num_steps, x_T, noises, eta):
    class_name, kwargs, _, _ = REFERENCES[sampler]
    loaded = getattr(diffusers, config["_class_name"]).from_config(config)  # as a pipeline does
    scheduler = getattr(diffusers, class_name).from_config(loaded.config, **kwargs)
    scheduler.set_timesteps(num_steps)
    overrides = settings.sampler_overrides(sampler)
    timesteps, sigmas = grids.timesteps_and_sigmas(
        _settings_schedule(settings),
        num_steps,
        overrides["sampler.spacing"],
        skip_zero=solvers.SAMPLERS[sampler].skip_zero,
        steps_offset=overrides["sampler.steps_offset"],
    )
    _check_grid(scheduler, sampler, timesteps, sigmas)
    return _run_reference(scheduler, sampler, sigmas, x_T, noises, eta)


def _settings_schedule(settings):
    return schedules.make_schedule(
        settings.schedule, settings.num_timesteps, settings.beta_start, settings.beta_end
    )


@pytest.mark.parametrize("sampler,config_name,num_steps", SD_CASES)
def test_stable_diffusion_settings_match_diffusers(sampler, config_name, num_steps):
    config = sd_scheduler_configs.CONFIGS[config_name]
    settings = scheduler_settings.from_diffusers(config)
    overrides = settings.sampler_overrides(sampler)
    x_T = np.asarray(jax.random.normal(jax.random.key(0), SHAPE))
    key = jax.random.key(1)
    noises = _noises(key, num_steps)
    eta = 0.7 if sampler == "ddim" and num_steps == 25 else 0.0
    ours = samplers.sample(
        _jax_model,
        _settings_schedule(settings),
        jnp.asarray(x_T),
        key,
        sampler=sampler,
        num_steps=num_steps,
        prediction=settings.prediction,
        spacing=overrides["sampler.spacing"],
        steps_offset=overrides["sampler.steps_offset"],
        set_alpha_to_one=overrides["sampler.set_alpha_to_one"],
        thresholding=overrides["sampler.thresholding"],
        eta=eta,
        return_trajectory=True,
    )
    reference = _sd_reference(sampler, config, settings, num_steps, x_T, noises, eta)
    _assert_trajectories_match(ours, reference)
