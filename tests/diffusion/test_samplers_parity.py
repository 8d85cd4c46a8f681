"""Step-for-step parity of every sampler with diffusers' PyTorch schedulers (test-only deps).

Both sides get the same schedule (diffusers' alphas_cumprod is overwritten with ours), the same
model function, the same initial noise and, for stochastic samplers, the same injected noise.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import grids, samplers, schedules, solvers

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


# sampler -> (diffusers class, constructor kwargs, state is sigma-scaled, uses injected noise)
REFERENCES = {
    "ddpm": ("DDPMScheduler", {"variance_type": "fixed_small", "clip_sample": False}, False, True),
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}, False, True),
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


def _reference(sampler, schedule, num_steps, spacing, x_T, noises, eta):
    class_name, kwargs, sigma_scaled, stochastic = REFERENCES[sampler]
    cls = getattr(diffusers, class_name)
    extra = {"use_karras_sigmas": True} if spacing == "karras" else {"timestep_spacing": spacing}
    scheduler = cls(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        steps_offset=0,
        **kwargs,
        **extra,
    )
    scheduler.alphas_cumprod = torch.tensor(
        np.asarray(schedule.alphas_cumprod), dtype=torch.float32
    )
    timesteps, sigmas = grids.timesteps_and_sigmas(
        schedule, num_steps, spacing, skip_zero=solvers.SAMPLERS[sampler].skip_zero
    )
    scheduler.set_timesteps(num_steps)
    if class_name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
        # Their own grids (timesteps, and sigmas from them) must equal ours ...
        np.testing.assert_allclose(scheduler.sigmas.numpy(), sigmas, rtol=1e-5, atol=1e-7)
        if spacing == "karras":  # ... except that they round Karras timesteps for the model
            scheduler.timesteps = torch.tensor(timesteps, dtype=torch.float32)
        np.testing.assert_allclose(scheduler.timesteps.numpy(), timesteps, rtol=1e-6)
    elif sigma_scaled:
        ref = scheduler.sigmas.numpy()[:: 2 if class_name == "HeunDiscreteScheduler" else 1]
        if class_name == "HeunDiscreteScheduler":
            ref = np.append(scheduler.sigmas.numpy()[0], scheduler.sigmas.numpy()[1::2])
        np.testing.assert_allclose(ref, sigmas, rtol=1e-5)  # the grids themselves agree
    module = importlib.import_module(cls.__module__)
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
    if len(states) == num_steps - 1:  # Heun's last (Euler) step leaves it "in second order"
        states.append(sample.numpy())
    states = np.stack(states)
    if sigma_scaled:  # to the VP scale our trajectories use
        states = states / np.sqrt(1.0 + sigmas[1:] ** 2).reshape((-1,) + (1,) * len(SHAPE))
    return states


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
]


@pytest.mark.parametrize("sampler,num_steps,spacing", CASES)
def test_trajectory_matches_diffusers(sampler, num_steps, spacing):
    schedule = schedules.make_schedule("linear", T, 1e-4, 0.02)
    x_T = np.asarray(jax.random.normal(jax.random.key(0), SHAPE))
    key = jax.random.key(1)
    noises = [
        np.asarray(jax.random.normal(jax.random.fold_in(key, i), SHAPE)) for i in range(num_steps)
    ]
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
    trajectory = np.asarray(ours.trajectory)
    assert trajectory.shape == reference.shape
    scale = np.max(np.abs(reference), axis=tuple(range(1, reference.ndim)), keepdims=True)
    np.testing.assert_array_less(np.abs(trajectory - reference) / scale, 1e-5)
