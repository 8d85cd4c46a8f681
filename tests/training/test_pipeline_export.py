"""Writing a diffusers Stable Diffusion pipeline directory: diffusers' own from_pretrained loads
it, its U-Net computes what ours does with the fine-tuned params, its scheduler is our DDIM, and
bad inputs are refused before anything is written."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusion.scheduler_settings import from_diffusers  # noqa: E402
from errors import ConfigError  # noqa: E402
from models.functional import functionalize  # noqa: E402
from models.pipeline_dir import read_pipeline_dir  # noqa: E402
from models.unet import UNet  # noqa: E402
from models.unet_weights import load_unet  # noqa: E402
from tests.models.sd_pipeline_checkpoint import tiny_pipeline  # noqa: E402
from training.pipeline_export import scheduler_config, write_pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_compiles")  # tests/conftest.py

# Stable Diffusion 1.5's settings in the project's names.
SD15 = dict(
    schedule="scaled_linear",
    num_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    prediction="eps",
    spacing="leading",
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
)
# SD 2.x-768-like v-prediction with the project's defaults; a cosine x0 model.
SETTINGS = {
    "sd15": SD15,
    "v_trailing": {**SD15, "prediction": "v", "spacing": "trailing", "steps_offset": 0},
    "linear_clipped": {
        **SD15,
        "schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "set_alpha_to_one": True,
        "clip_sample": True,
    },
    "cosine_x0": {**SD15, "schedule": "cosine", "prediction": "x0", "spacing": "linspace"},
}
DIFFUSERS_NAMES = {  # SchedulerSettings field -> (DDIMScheduler config key, our value -> theirs)
    "schedule": ("beta_schedule", {"cosine": "squaredcos_cap_v2"}),
    "prediction": ("prediction_type", {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}),
    "spacing": ("timestep_spacing", {}),
    "num_timesteps": ("num_train_timesteps", {}),
}
# What the export is written with (StableDiffusionPipeline keeps steps_offset 1 and no clipping).
EXPORTED = {**SD15, "prediction": "v", "spacing": "trailing"}
FINE_TUNE_SCALE = 0.01  # the params' perturbation, as a short fine-tune might move them
FROZEN = ("vae", "text_encoder", "tokenizer")


def _our_unet(config):
    """Our U-Net as (params, latents, timesteps, context) -> output, NCHW in and out."""
    apply = jax.jit(functionalize(lambda rngs: UNet(config, rngs=rngs)).apply)

    def run(params, latents, timesteps, context) -> np.ndarray:
        nhwc = jnp.asarray(latents.transpose(0, 2, 3, 1))
        out = apply(params, nhwc, jnp.asarray(timesteps), context=jnp.asarray(context))
        return np.asarray(out).transpose(0, 3, 1, 2)

    return run


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(source pipeline dir, its U-Net config, the U-Net params moved as by a fine-tune)."""
    directory = tmp_path_factory.mktemp("export") / "src"
    tiny_pipeline(directory)
    config, params = load_unet(directory / "unet")
    rng = np.random.default_rng(0)
    tuned = jax.tree.map(
        lambda p: p + FINE_TUNE_SCALE * rng.standard_normal(p.shape).astype(np.float32), params
    )
    return directory, config, params, tuned


def _write(source, out, **changes):
    directory, config, _, tuned = source
    arguments = dict(
        unet_config=config,
        unet_params=tuned,
        vae_dir=directory / "vae",
        text_encoder_dir=directory / "text_encoder",
        tokenizer_dir=directory / "tokenizer",
        scheduler=scheduler_config(**EXPORTED),
        source_index=json.loads((directory / "model_index.json").read_text()),
    )
    return write_pipeline(out, **(arguments | changes))


@pytest.fixture(scope="module")
def exported(source):
    return _write(source, source[0].parent / "out")


@pytest.fixture(scope="module")
def pipe(exported):
    return diffusers.StableDiffusionPipeline.from_pretrained(exported).to(torch.float32)


@pytest.mark.parametrize("name", SETTINGS)
def test_scheduler_config_round_trips_and_diffusers_takes_it(name):
    settings = SETTINGS[name]
    config = scheduler_config(**settings)
    read = from_diffusers(config)
    assert read.class_name == "DDIMScheduler"
    assert {key: getattr(read, key) for key in settings} == settings
    assert (read.thresholding, read.karras) == ("none", False)
    scheduler = diffusers.DDIMScheduler.from_config(config)
    for key, value in settings.items():
        their_key, names = DIFFUSERS_NAMES.get(key, (key, {}))
        assert scheduler.config[their_key] == names.get(value, value), key
    assert not scheduler.config.get("_use_default_values")  # every setting stated
    assert from_diffusers(dict(scheduler.config)) == read  # what diffusers keeps reads the same


@pytest.mark.parametrize(
    "change, message",
    [
        ({"spacing": "karras"}, r"spacing='karras'.*no Karras sigmas"),
        ({"spacing": "quadratic"}, r"spacing='quadratic' has no DDIMScheduler"),
        ({"schedule": "sigmoid"}, r"schedule='sigmoid'.*allowed: linear, scaled_linear, cosine"),
        ({"prediction": "edm"}, r"prediction='edm'.*allowed: eps, v, x0"),
        ({"prediction": "velocity"}, r"prediction='velocity'"),
        ({"beta_end": 0.0001}, r"beta_start=0.00085, beta_end=0.0001"),
        ({"num_timesteps": 1}, r"num_timesteps=1"),
        ({"steps_offset": -1}, r"steps_offset=-1"),
        ({"clip_sample": "no"}, r"clip_sample='no'"),
    ],
)
def test_scheduler_config_refuses_what_ddim_cannot_express(change, message):
    with pytest.raises(ValueError, match=message):
        scheduler_config(**(SD15 | change))


def test_diffusers_unet_computes_ours_with_the_tuned_params(source, pipe):
    _, config, params, tuned = source
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    timesteps = np.array([10, 981])
    context = rng.standard_normal((2, 7, config.context_dim)).astype(np.float32)
    with torch.no_grad():
        tensors = [torch.from_numpy(x) for x in (latents, timesteps, context)]
        reference = pipe.unet(*tensors).sample.numpy()
    ours = _our_unet(config)
    assert _relative_error(ours(tuned, latents, timesteps, context), reference) < 1e-4
    # The fine-tune moves the output far more than that: the tuned params are the ones written.
    assert _relative_error(ours(params, latents, timesteps, context), reference) > 1e-3


def test_the_export_is_a_ddim_sd_pipeline_with_the_frozen_parts_unchanged(source, exported, pipe):
    directory = source[0]
    assert isinstance(pipe.scheduler, diffusers.DDIMScheduler)
    assert from_diffusers(dict(pipe.scheduler.config)) == from_diffusers(
        scheduler_config(**EXPORTED)
    )
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.tokenizer.model_max_length == 12
    for part in FROZEN:
        names = sorted(p.name for p in (directory / part).iterdir())
        assert sorted(p.name for p in (exported / part).iterdir()) == names
        for name in names:
            assert (exported / part / name).read_bytes() == (directory / part / name).read_bytes()
    parts = read_pipeline_dir(exported)
    assert (parts.pipeline_class, parts.scheduler_class) == (
        "StableDiffusionPipeline",
        "DDIMScheduler",
    )
    index = json.loads((exported / "model_index.json").read_text())
    assert index["safety_checker"] == index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    assert not [p.name for p in exported.parent.iterdir() if p.name.startswith(".")]


def test_diffusers_samples_with_the_export(pipe):
    generator = torch.Generator().manual_seed(0)
    images = pipe("a photo", num_inference_steps=2, output_type="np", generator=generator).images
    assert images.shape == (1, 32, 32, 3)
    assert np.isfinite(images).all()


def test_text_part_classes_come_from_the_source_index(source, tmp_path):
    index = json.loads((source[0] / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "CLIPTokenizerFast"]
    out = _write(source, tmp_path / "fast", source_index=index)
    written = json.loads((out / "model_index.json").read_text())
    assert written["tokenizer"] == ["transformers", "CLIPTokenizerFast"]
    # trailing spacing ignores steps_offset, so 0 is written (StableDiffusionPipeline loads 1).
    trailing = scheduler_config(**SETTINGS["v_trailing"])
    out = _write(source, tmp_path / "default", source_index=None, scheduler=trailing)
    written = json.loads((out / "model_index.json").read_text())
    assert written["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert written["text_encoder"] == ["transformers", "CLIPTextModel"]
    index["text_encoder"] = ["transformers", "T5EncoderModel"]
    with pytest.raises(ConfigError, match="text_encoder=.*T5EncoderModel.*CLIPTextModel"):
        _write(source, tmp_path / "t5" / "out", source_index=index)
    assert not (tmp_path / "t5").exists()


def test_an_existing_pipeline_is_never_overwritten(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert _write(source, out) == out  # an empty directory is filled
    before = (out / "unet" / "config.json").read_bytes()
    with pytest.raises(FileExistsError, match=f"{out}.*already exists and is not empty"):
        _write(source, out, scheduler=scheduler_config(**SD15))
    assert (out / "unet" / "config.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _bad_parts(source, tmp_path):
    """Part directories that are refused, with the error each raises."""
    directory = source[0]
    pickled = tmp_path / "pickled_vae"
    pickled.mkdir(parents=True)
    shutil.copy(directory / "vae" / "config.json", pickled)
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    pickled_text = tmp_path / "pickled_text_encoder"
    pickled_text.mkdir()
    shutil.copy(directory / "text_encoder" / "config.json", pickled_text)
    (pickled_text / "pytorch_model.bin").write_bytes(b"pickle")
    no_vocab = tmp_path / "no_vocab"
    no_vocab.mkdir()
    shutil.copy(directory / "tokenizer" / "merges.txt", no_vocab)
    return [
        (
            {"vae_dir": tmp_path / "missing"},
            FileNotFoundError,
            "VAE directory .*missing.* not exist",
        ),
        (
            {"vae_dir": pickled},
            FileNotFoundError,
            r"missing diffusion_pytorch_model.safetensors.*\.bin",
        ),
        ({"text_encoder_dir": pickled_text}, FileNotFoundError, r"model.safetensors.*\.bin"),
        ({"tokenizer_dir": no_vocab}, FileNotFoundError, r"neither tokenizer.json nor vocab.json"),
        ({"unet_config": dataclasses.replace(source[1], qkv_bias=True)}, ConfigError, "qkv_bias"),
        ({"scheduler": {"_class_name": "DDIMScheduler", "beta_schedule": "x"}}, ValueError, "="),
        ({"scheduler": scheduler_config(**SD15 | {"clip_sample": True})}, ValueError, "clip_"),
        ({"scheduler": {"_class_name": "DDIMScheduler"}}, ValueError, "clip_sample=true"),
        ({"scheduler": scheduler_config(**SD15 | {"steps_offset": 0})}, ValueError, "offset=0"),
    ]


def test_bad_inputs_are_refused_before_anything_is_written(source, tmp_path):
    for change, error, message in _bad_parts(source, tmp_path / "parts"):
        with pytest.raises(error, match=message):
            _write(source, tmp_path / "exports" / "out", **change)
        assert not (tmp_path / "exports").exists(), change


def test_a_failed_write_leaves_no_output_directory(source, tmp_path):
    tuned = dict(source[3])
    del tuned["conv_in"]  # params that do not fit the config: found while writing the U-Net
    with pytest.raises(ValueError, match="Params do not match the config"):
        _write(source, tmp_path / "out", unet_params=tuned)
    assert list(tmp_path.iterdir()) == []
