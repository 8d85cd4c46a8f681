"""--mode=export end to end: fine-tune a tiny Stable Diffusion pipeline for 3 steps, export the
run, and diffusers' own StableDiffusionPipeline loads it, its U-Net computes ours with the
trained EMA params (and no longer the source's), the frozen parts are the source's bytes, and it
samples. Runs that cannot be exported are refused, naming the field, before any checkpoint is
read."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from configs import digits_tiny, sd_pretrained  # noqa: E402
from errors import ConfigError  # noqa: E402
from models.dit import DiTConfig  # noqa: E402
from models.functional import functionalize  # noqa: E402
from models.unet import UNet  # noqa: E402
from models.unet_weights import WEIGHTS_FILE  # noqa: E402
from tests.models.sd_pipeline_checkpoint import tiny_pipeline  # noqa: E402
from training import export_run, loop  # noqa: E402
from training.run_config import RunConfig  # noqa: E402

FROZEN = ("vae", "text_encoder", "tokenizer")
pytestmark = pytest.mark.usefixtures("fast_compiles")  # tests/conftest.py
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(pipeline directory, the diffusers pipeline saved there)."""
    directory = tmp_path_factory.mktemp("export_run") / "src"
    return directory, tiny_pipeline(directory)


def _config(source_dir, export_path=""):
    """configs/sd_pretrained.py on the tiny pipeline: 3 fast steps that visibly move the EMA."""
    config = sd_pretrained.get_config()
    config.pretrained.path = str(source_dir)
    config.export.path = str(export_path)
    config.model.remat = False
    config.autoencoder.decode_chunk = 0
    config.update(num_train_steps=3, batch_size=8, checkpoint_every_steps=3, sample_every_steps=0)
    config.optimizer.update(learning_rate=1e-3, warmup_steps=0, ema_decay=0.0)  # EMA = params
    config.sampler.update(num_steps=2, max_steps=0, num_samples=1)
    return config


@pytest.fixture(scope="module")
def trained(source, tmp_path_factory):
    """(workdir, the train state after 3 steps, the typed run config, the export's path)."""
    directory, _ = source
    root = tmp_path_factory.mktemp("export_run_work")
    workdir, out = str(root / "run"), root / "exported"
    config = _config(directory, out)
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 3
    path = export_run.export_pipeline(config, workdir)
    assert path == out
    return workdir, state, RunConfig.from_configdict(config), out


@pytest.fixture(scope="module")
def pipe(trained):
    return diffusers.StableDiffusionPipeline.from_pretrained(trained[3]).to(torch.float32)


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def test_diffusers_unet_computes_ours_with_the_trained_ema_params(source, trained, pipe):
    _, state, run, _ = trained
    config = run.model
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)  # NCHW, as diffusers
    timesteps = np.array([10, 981])
    context = rng.standard_normal((2, 7, config.context_dim)).astype(np.float32)
    with torch.no_grad():
        tensors = [torch.from_numpy(x) for x in (latents, timesteps, context)]
        exported = pipe.unet(*tensors).sample.numpy()
        original = source[1].unet.to(torch.float32)(*tensors).sample.numpy()
    apply = jax.jit(functionalize(lambda rngs: UNet(config, rngs=rngs)).apply)
    ours = apply(
        jax.device_get(state.ema_params),
        jnp.asarray(latents.transpose(0, 2, 3, 1)),
        jnp.asarray(timesteps),
        context=jnp.asarray(context),
    )
    ours = np.asarray(ours).transpose(0, 3, 1, 2)
    assert _relative_error(ours, exported) < 1e-4
    # Three steps at lr 1e-3 moved the U-Net far more than that: the fine-tune was exported.
    assert _relative_error(original, exported) > 1e-2


def test_the_frozen_parts_are_the_source_bytes_and_it_samples(source, trained, pipe):
    directory, out = source[0], trained[3]
    for part in FROZEN:
        names = sorted(p.name for p in (directory / part).iterdir())
        assert sorted(p.name for p in (out / part).iterdir()) == names
        for name in names:
            assert (out / part / name).read_bytes() == (directory / part / name).read_bytes()
    assert isinstance(pipe.scheduler, diffusers.DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    generator = torch.Generator().manual_seed(0)
    images = pipe("a digit", num_inference_steps=2, output_type="np", generator=generator).images
    assert images.shape == (1, 32, 32, 3)
    assert np.isfinite(images).all()


@pytest.mark.slow
def test_export_mode_from_the_command_line(source, trained, tmp_path):
    """main.py --mode=export on the trained workdir, restored onto one device (trained on 8):
    the same U-Net bytes as the in-process export."""
    workdir, _, _, first = trained
    out = tmp_path / "cli"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--mode=export",
            "--config=configs/sd_pretrained.py",
            f"--workdir={workdir}",
            f"--config.pretrained.path={source[0]}",
            f"--config.export.path={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model_index.json").is_file()
    weights = ("unet", WEIGHTS_FILE)
    assert out.joinpath(*weights).read_bytes() == first.joinpath(*weights).read_bytes()


def test_without_a_checkpoint_the_pretrained_unet_is_exported(source, tmp_path):
    """An empty workdir exports the source U-Net at step 0: its very tensors."""
    directory, _ = source
    out = export_run.export_pipeline(_config(directory, tmp_path / "out"), str(tmp_path / "run"))
    written = load_file(out / "unet" / WEIGHTS_FILE)
    original = load_file(directory / "unet" / WEIGHTS_FILE)
    assert sorted(written) == sorted(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(written[name], tensor, err_msg=name)


@pytest.fixture
def no_restore(monkeypatch):
    """Makes building the experiment or opening the checkpoints fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was about to be read")

    monkeypatch.setattr(export_run, "build_experiment", refuse)
    monkeypatch.setattr(export_run.checkpointing, "make_manager", refuse)


def test_an_unset_or_non_empty_export_path_is_refused(source, tmp_path, no_restore, snapshot):
    directory, _ = source
    with pytest.raises(ConfigError, match=r"export.path='' must name"):
        export_run.export_pipeline(_config(directory), str(tmp_path / "run"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    before = snapshot(taken)
    with pytest.raises(ConfigError, match=r"export.path='.*taken' exists and is not an empty"):
        export_run.export_pipeline(_config(directory, taken), str(tmp_path / "run"))
    assert snapshot(taken) == before
    assert not (tmp_path / "run").exists()


def test_a_run_without_text_conditioning_is_refused(tmp_path, no_restore):
    config = digits_tiny.get_config()
    config.export.path = str(tmp_path / "out")
    with pytest.raises(ConfigError, match=r"conditioning.kind='none' must be 'text'"):
        export_run.export_pipeline(config, str(tmp_path / "run"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


# (section, its changed fields or a whole replacement, the refusal's message)
REFUSED = [
    ("text_encoder", {"name": "t5"}, r"text_encoder.name='t5' must be 'clip'"),
    ("autoencoder", {"path": ""}, r"autoencoder.path='' must name"),
    ("diffusion", {"process": "flow", "prediction": "velocity"}, r"diffusion.process='flow'"),
    ("model", DiTConfig(), r"model.name='dit' must be 'unet'"),
    ("model", {"qkv_bias": True}, r"model.qkv_bias=True must be False"),
    ("sampler", {"thresholding": "static"}, r"sampler.thresholding='static' must be 'none'"),
    ("sampler", {"thresholding": "dynamic"}, r"sampler.thresholding='dynamic' must be 'none'"),
    ("sampler", {"steps_offset": 0}, r"sampler.steps_offset=0 must be 1"),
    ("sampler", {"spacing": "karras"}, r"sampler.spacing='karras' cannot be written"),
    ("diffusion", {"prediction": "edm"}, r"diffusion.prediction='edm' has no DDIMScheduler"),
]


@pytest.mark.parametrize(
    "section, change, message",
    REFUSED,
    ids=[
        ",".join(f"{section}.{k}={v}" for k, v in change.items())
        if isinstance(change, dict)
        else f"{section}={type(change).__name__}"
        for section, change, _ in REFUSED
    ],
)
def test_runs_the_pipeline_cannot_express_are_refused(source, tmp_path, section, change, message):
    run = RunConfig.from_configdict(_config(source[0], tmp_path / "out"))
    assert export_run.check_exportable(run)["_class_name"] == "DDIMScheduler"
    if isinstance(change, dict):
        change = dataclasses.replace(getattr(run, section), **change)
    with pytest.raises(ConfigError, match=message):
        export_run.check_exportable(dataclasses.replace(run, **{section: change}))
