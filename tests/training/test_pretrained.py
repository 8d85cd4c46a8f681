"""A diffusers Stable Diffusion pipeline directory as a run: the config it writes, and sampling
through the project's code equal to diffusers' own StableDiffusionPipeline on a tiny random one
(same prompt, negative prompt and initial latents; DDIM / Euler / DPM-Solver++ 2M, guidance 7.5,
10 steps)."""

import jax
import numpy as np
import pytest

from configs import sd_pretrained
from errors import ConfigError
from training import loop
from training.experiment import build_experiment
from training.run_config import RunConfig
from training.sampling import make_sample_fn

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from tests.models import sd_pipeline_checkpoint, sd_unet_checkpoint  # noqa: E402 (torch above)

PROMPT, NEGATIVE = "a handwritten digit seven", "a blurry digit"
# project sampler -> the diffusers scheduler class a user would pick for it
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """name -> (directory, diffusers pipeline): SD 1.x style (eps) and SD 2.x style (v)."""
    made = {}
    for name, unet, scheduler in (
        ("sd1", sd_unet_checkpoint.SD1_TINY, None),
        ("sd2", sd_unet_checkpoint.SD2_TINY, {"prediction_type": "v_prediction"}),
    ):
        directory = tmp_path_factory.mktemp(name)
        pipe = sd_pipeline_checkpoint.tiny_pipeline(directory, unet, scheduler=scheduler)
        made[name] = directory, pipe
    return made


def _config(directory, sampler="ddim", **sampler_fields):
    config = sd_pretrained.get_config()
    config.pretrained.path = str(directory)
    config.model.remat = False
    config.autoencoder.decode_chunk = 0
    config.sampler.update(
        name=sampler,
        num_steps=10,
        max_steps=0,
        num_samples=2,
        prompts=PROMPT,
        negative_prompt=NEGATIVE,
        guidance_scale=7.5,
        **sampler_fields,
    )
    return config


def test_the_pipeline_fixes_model_components_schedule_and_sampler(pipelines):
    directory, _ = pipelines["sd2"]
    run = RunConfig.from_configdict(_config(directory, "euler"))
    unet = sd_unet_checkpoint.SD2_TINY
    assert run.model.base_channels == unet["block_out_channels"][0]
    assert run.model.use_linear_projection and not run.model.qkv_bias
    assert run.model.context_dim == unet["cross_attention_dim"] and run.model.pooled_dim is None
    assert run.data.image_size == 32 and run.data.channels == 3  # 16 latents x VAE factor 2
    assert run.autoencoder.path == str(directory / "vae")
    assert (run.text_encoder.name, run.text_encoder.max_length) == ("clip", 12)
    assert run.text_encoder.attend_padding and not run.text_encoder.use_pooled
    assert run.conditioning.kind == "text"
    assert (run.diffusion.schedule, run.diffusion.prediction) == ("scaled_linear", "v")
    assert (run.diffusion.beta_start, run.diffusion.beta_end) == (0.00085, 0.012)
    # The file states timestep_spacing="leading" (tiny_pipeline writes SD 1.5's newer file),
    # which EulerDiscreteScheduler.from_config takes over its own "linspace" default.
    assert (run.sampler.spacing, run.sampler.steps_offset) == ("leading", 1)


def test_a_smaller_image_size_keeps_attention_at_the_same_levels(pipelines):
    directory, _ = pipelines["sd1"]
    config = _config(directory)
    native = RunConfig.from_configdict(config).model
    config.pretrained.image_size = 16
    half = RunConfig.from_configdict(config).model
    assert native.image_size == 16 and half.image_size == 8
    assert [r * 2 for r in half.attention_resolutions] == list(native.attention_resolutions)


def test_bad_pretrained_inputs_are_named(pipelines, tmp_path):
    directory, _ = pipelines["sd1"]
    config = _config(directory)
    config.pretrained.image_size = 18
    with pytest.raises(ConfigError, match="pretrained.image_size=18"):
        RunConfig.from_configdict(config)
    with pytest.raises(ConfigError, match="model_index.json"):
        RunConfig.from_configdict(_config(tmp_path))
    config = _config(directory, "heun")
    config.init_from = str(tmp_path)
    with pytest.raises(ConfigError, match="init_from="):
        build_experiment(config)


def _ours(directory, sampler):
    """(final latents, decoded images) of the project's sample function, and x_T."""
    experiment = build_experiment(_config(directory, sampler))
    state, shardings = loop.create_state(experiment, 0)
    kwargs = dict(
        precond=experiment.step_config.precond,
        image_shape=experiment.image_shape,
        mesh=experiment.mesh,
        params_sharding=shardings.ema_params,
        conditions=experiment.sample_conditions,
    )
    key = jax.random.key(0)
    latents = make_sample_fn(experiment.model, experiment.schedule, experiment.sampler, **kwargs)
    kwargs["latent"] = experiment.latent
    images = make_sample_fn(experiment.model, experiment.schedule, experiment.sampler, **kwargs)

    noise_key, _ = jax.random.split(key)
    x_T = np.asarray(jax.random.normal(noise_key, (8, *experiment.image_shape)))[:2]
    final_latents = np.asarray(latents.on_device(state.ema_params, key))[:2]  # not clipped
    return final_latents, images(state.ema_params, key), x_T


def _diffusers(pipe, sampler, x_T, output_type):
    scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    pipe.scheduler = scheduler
    scheduler.set_timesteps(10)
    # Our chains start from x_T at the model's scale (the exact VP marginal), diffusers' from
    # latents * init_noise_sigma at its own (sigma-scaled for Euler, with sigma_max, not
    # sqrt(sigma_max^2 + 1)): the same starting point, expressed for each.
    scale = 1.0
    if sampler == "euler":
        sigma_max = float(scheduler.sigmas[0])
        scale = np.sqrt(sigma_max**2 + 1) / float(scheduler.init_noise_sigma)
    latents = torch.from_numpy((x_T * scale).astype(np.float32).transpose(0, 3, 1, 2).copy())
    out = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=10,
        guidance_scale=7.5,
        latents=latents,
        num_images_per_prompt=2,
        output_type=output_type,
    ).images
    if output_type == "latent":
        return out.numpy().transpose(0, 2, 3, 1)
    return np.asarray(out)


def _relative(ours, reference):
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize(
    "name,sampler",
    [
        ("sd1", "ddim"),
        pytest.param("sd1", "euler", marks=pytest.mark.slow),
        pytest.param("sd1", "dpmpp_2m", marks=pytest.mark.slow),
        pytest.param("sd2", "ddim", marks=pytest.mark.slow),
    ],
)
def test_sampling_equals_diffusers_pipeline(pipelines, name, sampler):
    directory, pipe = pipelines[name]
    latents, images, x_T = _ours(directory, sampler)
    reference_latents = _diffusers(pipe, sampler, x_T, "latent")
    assert _relative(latents, reference_latents) < 1e-3
    reference_images = _diffusers(pipe, sampler, x_T, "np")  # [0, 1]
    assert np.abs((images + 1) / 2 - reference_images).max() < 1e-3
