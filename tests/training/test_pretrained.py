"""A diffusers Stable Diffusion pipeline directory as a run: the config it writes, and sampling
through the project's code equal to diffusers' own StableDiffusionPipeline on a tiny random one
(same prompt, negative prompt and initial latents; DDIM / Euler / DPM-Solver++ 2M, guidance 7.5,
10 steps)."""

import importlib

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


# --- img2img and inpainting through the same sample function, against diffusers' pipelines ---


def _image_files(directory, size=32):
    """A smooth colour image and a half / half mask as PNG files (what a user passes)."""
    from PIL import Image  # noqa: PLC0415

    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    rgb = np.stack([x, y, 0.5 * (1 - x) + 0.25], -1)
    image_path, mask_path = directory / "image.png", directory / "mask.png"
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(image_path)
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2 :] = 255  # regenerate the right half
    Image.fromarray(mask).save(mask_path)
    return image_path, mask_path


def _edited_images(directory, image_path, mask_path, strength):
    config = _config(directory, init_image=str(image_path), mask=str(mask_path or ""))
    config.sampler.strength = strength
    experiment = build_experiment(config)
    state, shardings = loop.create_state(experiment, 0)
    fn = make_sample_fn(
        experiment.model,
        experiment.schedule,
        experiment.sampler,
        precond=experiment.step_config.precond,
        image_shape=experiment.image_shape,
        mesh=experiment.mesh,
        params_sharding=shardings.ema_params,
        conditions=experiment.sample_conditions,
        latent=experiment.latent,
        init=experiment.sample_init,
    )
    key = jax.random.key(0)
    images = np.asarray(fn.on_device(state.ema_params, key))[:2]
    x_T = np.asarray(jax.random.normal(jax.random.split(key)[0], (8, *experiment.image_shape)))
    return images, x_T[:2]


def _diffusers_edit(pipe, kind, image_path, mask_path, strength, x_T, monkeypatch):
    """diffusers' img2img / inpaint pipeline with our x_T as its noise and the VAE posterior
    mean (what we encode init images to) instead of a posterior sample."""
    from PIL import Image  # noqa: PLC0415

    module = importlib.import_module(
        f"diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_{kind}"
    )
    noise = torch.from_numpy(x_T.transpose(0, 3, 1, 2).copy())
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **_: noise.reshape(shape))
    monkeypatch.setattr(
        module, "retrieve_latents", lambda output, generator=None, **_: output.latent_dist.mode()
    )
    cls = {"img2img": "StableDiffusionImg2ImgPipeline", "inpaint": "StableDiffusionInpaintPipeline"}
    edit = getattr(diffusers, cls[kind])(**pipe.components)
    edit.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    kwargs = {"image": Image.open(image_path), "strength": strength}
    if kind == "inpaint":
        kwargs |= {"mask_image": Image.open(mask_path), "height": 32, "width": 32}
    out = edit(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=10,
        guidance_scale=7.5,
        num_images_per_prompt=2,
        output_type="np",
        **kwargs,
    ).images
    return np.asarray(out) * 2 - 1  # [0, 1] -> our [-1, 1]


@pytest.mark.parametrize(
    "kind,strength,unet",
    [
        ("img2img", 0.6, "sd1"),
        ("inpaint", 0.6, "sd1"),
        pytest.param("inpaint", 1.0, "sd1", marks=pytest.mark.slow),
        pytest.param("inpaint", 1.0, "sd1_inpainting", marks=pytest.mark.slow),
    ],
)
def test_edits_equal_diffusers_pipelines(
    pipelines, tmp_path_factory, tmp_path, monkeypatch, kind, strength, unet
):
    if unet == "sd1_inpainting":  # the 9-channel U-Net: mask + masked image latents as input
        directory = tmp_path_factory.mktemp("inpainting")
        config = {**sd_unet_checkpoint.SD1_TINY, "in_channels": 9}
        pipe = sd_pipeline_checkpoint.tiny_pipeline(directory, config)
    else:
        directory, pipe = pipelines[unet]
    image_path, mask_path = _image_files(tmp_path)
    mask = mask_path if kind == "inpaint" else None
    ours, x_T = _edited_images(directory, image_path, mask, strength)
    reference = _diffusers_edit(pipe, kind, image_path, mask_path, strength, x_T, monkeypatch)
    assert np.abs(ours - reference).max() < 2e-3  # decoded images, 1e-3 of diffusers' [0, 1]


def test_an_inpainting_unet_needs_a_mask_and_cannot_be_trained(tmp_path_factory, tmp_path):
    directory = tmp_path_factory.mktemp("inpainting_refusals")
    config = {**sd_unet_checkpoint.SD1_TINY, "in_channels": 9}
    sd_pipeline_checkpoint.tiny_pipeline(directory, config)
    run = RunConfig.from_configdict(_config(directory))
    assert run.model.in_channels == 9 and run.model.out_channels == 4
    with pytest.raises(ConfigError, match="sampler.mask"):
        build_experiment(_config(directory))
    with pytest.raises(ConfigError, match="inpainting U-Net"):
        loop.train_and_evaluate(_config(directory), str(tmp_path / "work"))


def test_bad_edit_inputs_are_named(pipelines, tmp_path):
    directory, _ = pipelines["sd1"]
    with pytest.raises(ConfigError, match="sampler.mask"):
        RunConfig.from_configdict(_config(directory, mask="m.png"))
    with pytest.raises(ConfigError, match="sampler.strength=0.05"):
        RunConfig.from_configdict(_config(directory, init_image="x.png", strength=0.05))
    with pytest.raises(ConfigError, match="sampler.init_image"):
        build_experiment(_config(directory, init_image=str(tmp_path / "missing.png")))


def test_a_fresh_state_starts_from_the_pipelines_unet_fsdp_sharded(pipelines):
    directory, pipe = pipelines["sd1"]
    config = _config(directory)
    config.mesh.fsdp = 4
    experiment = build_experiment(config)
    state, shardings = loop.create_state(experiment, 0)
    from models.unet_weights import load_unet  # noqa: PLC0415

    _, loaded = load_unet(directory / "unet")
    flat_state = jax.tree_util.tree_leaves_with_path(state.params)
    flat_loaded = dict(jax.tree_util.tree_leaves_with_path(loaded))
    assert len(flat_state) == len(flat_loaded)
    for path, leaf in flat_state:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_loaded[path]))
    np.testing.assert_array_equal(
        np.asarray(state.ema_params["conv_in"]["kernel"]),
        np.asarray(loaded["conv_in"]["kernel"]),
    )
    sharded = [leaf for _, leaf in flat_state if not leaf.sharding.is_fully_replicated]
    assert sharded, "mesh.fsdp=4 shards the big kernels"
