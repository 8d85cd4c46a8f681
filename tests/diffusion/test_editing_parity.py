"""Image-to-image and inpainting against diffusers' schedulers driven the way its
StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline (4-channel U-Net) drive them:
set_timesteps, get_timesteps' slice and set_begin_index, add_noise for the start, and after
every step the inpainting blend with the image noised to the next timestep (the clean image
after the last). Stable Diffusion 1.5's scheduler file, read by diffusion/scheduler_settings.py,
sets both sides; the final latents must agree to 1e-5 relative.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import samplers, scheduler_settings, schedules
from diffusion.editing import Init
from tests.diffusion import sd_scheduler_configs

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 8, 8, 4)  # latents; every operation here is elementwise or along axis 1
MASK_SHAPE = (2, 8, 8, 1)
NUM_STEPS = 10
T = 1000

# sampler -> (diffusers class, kwargs choosing its algorithm, state is sigma-scaled)
REFERENCES = {
    "ddim": ("DDIMScheduler", {}, False),
    "euler": ("EulerDiscreteScheduler", {}, True),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        False,
    ),
    "lms": ("LMSDiscreteScheduler", {}, True),
    "heun": ("HeunDiscreteScheduler", {}, True),
    "unipc": (
        "UniPCMultistepScheduler",
        {"solver_type": "bh2", "solver_order": 2, "predict_x0": True},
        False,
    ),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, True),
}


def _jax_model(x, t):
    """A smooth nonlinear eps model that mixes neighbouring rows, so that the region the blend
    holds changes what the network predicts in the regenerated one."""
    scale = (t / T).reshape((-1,) + (1,) * (x.ndim - 1))
    return 0.5 * jnp.tanh(x) + 0.3 * jnp.roll(jnp.tanh(x), 1, axis=1) + 0.1 * x * scale


def _torch_model(x, t):
    scale = float(t) / T
    return 0.5 * torch.tanh(x) + 0.3 * torch.roll(torch.tanh(x), 1, dims=1) + 0.1 * x * scale


def _settings():
    return scheduler_settings.from_diffusers(sd_scheduler_configs.SD15)


def _scheduler(sampler):
    config = sd_scheduler_configs.SD15
    class_name, kwargs, _ = REFERENCES[sampler]
    loaded = getattr(diffusers, config["_class_name"]).from_config(config)  # as a pipeline does
    return getattr(diffusers, class_name).from_config(loaded.config, **kwargs)


def _reference(sampler, strength, x_T, image, mask, from_noise, noises):
    """The pipelines' loop with the toy model; returns the final latents."""
    scheduler = _scheduler(sampler)
    scheduler.set_timesteps(NUM_STEPS)
    # get_timesteps
    init_timestep = min(int(NUM_STEPS * strength), NUM_STEPS)
    t_start = max(NUM_STEPS - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    # prepare_latents
    noise, image_latents = torch.tensor(x_T), torch.tensor(image)
    if from_noise:
        # diffusers multiplies by init_noise_sigma, which for sigma-based schedulers with
        # "linspace" spacing is sigma_max, not sqrt(sigma_max^2 + 1); start both sides from
        # the state a plain chain starts from (as test_samplers_parity.py does).
        sigma_scaled = REFERENCES[sampler][2]
        latents = noise * (np.sqrt(1.0 + float(scheduler.sigmas[0]) ** 2) if sigma_scaled else 1.0)
    else:
        latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(SHAPE[0]))
    module = importlib.import_module(type(scheduler).__module__)
    randn_tensor = getattr(module, "randn_tensor", None)
    step = {"i": 0}
    if randn_tensor is not None:  # replay our per-step noise in ancestral steps
        module.randn_tensor = lambda shape, **kw: torch.tensor(noises[step["i"]])
    try:
        for i, t in enumerate(timesteps):
            step["i"] = i
            eps = _torch_model(scheduler.scale_model_input(latents, t), t)
            latents = scheduler.step(eps, t, latents).prev_sample
            if mask is not None:
                init_latents_proper = image_latents
                if i < len(timesteps) - 1:
                    init_latents_proper = scheduler.add_noise(
                        init_latents_proper, noise, torch.tensor([timesteps[i + 1]])
                    )
                init_mask = torch.tensor(mask)
                latents = (1 - init_mask) * init_latents_proper + init_mask * latents
    finally:
        if randn_tensor is not None:
            module.randn_tensor = randn_tensor
    return latents.numpy()


def _ours(sampler, strength, x_T, image, mask, from_noise, key):
    settings = _settings()
    overrides = settings.sampler_overrides(sampler)
    schedule = schedules.make_schedule(
        settings.schedule, settings.num_timesteps, settings.beta_start, settings.beta_end
    )
    return samplers.sample(
        _jax_model,
        schedule,
        jnp.asarray(x_T),
        key,
        sampler=sampler,
        num_steps=NUM_STEPS,
        prediction=settings.prediction,
        spacing=overrides["sampler.spacing"],
        steps_offset=overrides["sampler.steps_offset"],
        set_alpha_to_one=overrides["sampler.set_alpha_to_one"],
        thresholding=overrides["sampler.thresholding"],
        init=Init(jnp.asarray(image), None if mask is None else jnp.asarray(mask), from_noise),
        strength=strength,
    )


CASES = [
    (sampler, strength, mode)
    for sampler in ("ddim", "euler", "dpmpp_2m")
    for strength, mode in ((0.6, "img2img"), (0.6, "inpaint"), (1.0, "inpaint"))
] + [
    ("lms", 0.6, "inpaint"),  # the first kept step weights as in the full grid (drop_first)
    ("unipc", 0.6, "inpaint"),
    ("heun", 0.6, "img2img"),  # (Heun inpainting differs: diffusers also blends mid-step)
    ("euler_ancestral", 0.6, "inpaint"),
    ("dpmpp_2m", 0.3, "inpaint"),
]


@pytest.mark.parametrize("sampler,strength,mode", CASES)
def test_edit_matches_diffusers_pipeline_loop(sampler, strength, mode):
    x_T = np.asarray(jax.random.normal(jax.random.key(0), SHAPE))
    image = np.asarray(jax.random.normal(jax.random.key(1), SHAPE))
    mask = None
    if mode == "inpaint":
        mask = np.asarray(jax.random.bernoulli(jax.random.key(2), 0.5, MASK_SHAPE), np.float32)
    from_noise = strength == 1.0  # diffusers' inpainting starts from pure noise only there
    key = jax.random.key(3)
    noises = [
        np.asarray(jax.random.normal(jax.random.fold_in(key, i), SHAPE)) for i in range(NUM_STEPS)
    ]
    ours = _ours(sampler, strength, x_T, image, mask, from_noise, key)
    reference = _reference(sampler, strength, x_T, image, mask, from_noise, noises)
    kept = min(int(NUM_STEPS * strength), NUM_STEPS)
    assert int(ours.nfe) == (2 * kept - 1 if sampler == "heun" else kept)
    scale = np.max(np.abs(reference))
    np.testing.assert_array_less(np.abs(np.asarray(ours.samples) - reference) / scale, 1e-5)
    if mask is not None:  # the kept region is the image itself
        keep = np.broadcast_to(mask == 0, SHAPE)
        np.testing.assert_allclose(reference[keep], image[keep], rtol=1e-6, atol=1e-6)
