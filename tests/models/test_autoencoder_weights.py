"""diffusers-format autoencoder directories: load, save, round trips, legacy names, errors."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from safetensors.numpy import load_file, save_file

from errors import ConfigError
from models import autoencoder as ae
from models.autoencoder_weights import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_autoencoder,
    params_to_diffusers,
    save_autoencoder,
)
from tests.models.autoencoder_checkpoint import torch_vae

pytestmark = pytest.mark.usefixtures("fast_compiles")  # tests/conftest.py
ATTENTION = "encoder.mid_block.attentions.0"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, torch model): a tiny perturbed AutoencoderKL saved by save_pretrained."""
    model = torch_vae(shift_factor=0.25)
    directory = tmp_path_factory.mktemp("vae")
    model.save_pretrained(directory)
    return directory, model


def _copy(directory, destination, tensors=None, config=None):
    """A copy of the checkpoint with its tensors and / or config.json replaced."""
    destination.mkdir(exist_ok=True)
    shutil.copy(directory / CONFIG_FILE, destination / CONFIG_FILE)
    shutil.copy(directory / WEIGHTS_FILE, destination / WEIGHTS_FILE)
    if tensors is not None:
        save_file(tensors, destination / WEIGHTS_FILE)
    if config is not None:
        (destination / CONFIG_FILE).write_text(json.dumps(config))
    return destination


def _assert_params_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype == np.float32
        np.testing.assert_array_equal(x, y)


def test_load_save_load_is_exact_and_diffusers_reads_what_we_save(checkpoint, tmp_path):
    directory, model = checkpoint
    config, params = load_autoencoder(directory)
    assert (config.shift_factor, config.block_out_channels) == (0.25, (8, 16))
    save_autoencoder(tmp_path, config, params)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    config_again, params_again = load_autoencoder(tmp_path)
    assert config_again == config
    _assert_params_equal(params_again, params)

    reloaded = TorchAutoencoderKL.from_pretrained(tmp_path).eval()
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), tensor.numpy())
    images = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)))
    with torch.no_grad():
        expected = model(images.float()).sample
        np.testing.assert_array_equal(reloaded(images.float()).sample.numpy(), expected.numpy())


def test_reads_pre_0_14_attention_names_and_conv_shaped_kernels(checkpoint, tmp_path):
    """query / key / value / proj_attn, weights stored as 1x1 conv kernels [O, I, 1, 1]."""
    directory, _ = checkpoint
    tensors = load_file(directory / WEIGHTS_FILE)
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    for new, old in renames.items():
        weight = tensors.pop(f"{ATTENTION}.{new}.weight")
        tensors[f"{ATTENTION}.{old}.weight"] = weight[:, :, None, None]
        tensors[f"{ATTENTION}.{old}.bias"] = tensors.pop(f"{ATTENTION}.{new}.bias")
    _, legacy = load_autoencoder(_copy(directory, tmp_path, tensors=tensors))
    _assert_params_equal(legacy, load_autoencoder(directory)[1])


def test_half_precision_checkpoints_load_as_float32(checkpoint, tmp_path):
    directory, _ = checkpoint
    tensors = {k: v.astype(np.float16) for k, v in load_file(directory / WEIGHTS_FILE).items()}
    _, params = load_autoencoder(_copy(directory, tmp_path, tensors=tensors))
    kernel = params["encoder"]["conv_in"]["kernel"]
    assert kernel.dtype == np.float32
    expected = tensors["encoder.conv_in.weight"].astype(np.float32).transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(kernel, expected)


def test_missing_directory_or_files_name_what_is_expected(checkpoint, tmp_path):
    with pytest.raises(
        FileNotFoundError, match=rf"'{tmp_path}/absent' does not exist.*{WEIGHTS_FILE}"
    ):
        load_autoencoder(tmp_path / "absent")
    (tmp_path / "vae").mkdir()
    shutil.copy(checkpoint[0] / CONFIG_FILE, tmp_path / CONFIG_FILE)
    with pytest.raises(FileNotFoundError, match=rf"is missing {WEIGHTS_FILE}.*'vae' folder"):
        load_autoencoder(tmp_path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("decoder.conv_out.bias"), r"Missing: decoder\.conv_out\.bias\. "),
        (
            lambda t: t.update({"decoder.extra.weight": np.zeros(2, np.float32)}),
            r"Missing: none\. Unexpected: decoder\.extra\.weight",
        ),
        (
            lambda t: t.update({"encoder.conv_in.weight": np.zeros((8, 3, 5, 5), np.float32)}),
            r"wrong shape: encoder\.conv_in\.weight expected \(8, 3, 3, 3\) got \(8, 3, 5, 5\)",
        ),
        (
            lambda t: t.update({f"{ATTENTION}.query.bias": t[f"{ATTENTION}.to_q.bias"]}),
            rf"old and new names for one tensor: {ATTENTION}\.query\.bias and",
        ),
    ],
    ids=["missing", "unexpected", "shape", "old_and_new_name"],
)
def test_tensor_errors_name_the_tensors(checkpoint, tmp_path, edit, message):
    directory, _ = checkpoint
    tensors = load_file(directory / WEIGHTS_FILE)
    edit(tensors)
    with pytest.raises(ValueError, match=message):
        load_autoencoder(_copy(directory, tmp_path, tensors=tensors))


def test_config_errors_name_the_file(checkpoint, tmp_path):
    directory, _ = checkpoint
    config = json.loads((directory / CONFIG_FILE).read_text())
    config["down_block_types"] = ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]
    with pytest.raises(ConfigError, match=r"config\.json.*AttnDownEncoderBlock2D"):
        load_autoencoder(_copy(directory, tmp_path, config=config))


def test_save_refuses_params_of_another_config(checkpoint, tmp_path):
    config, params = load_autoencoder(checkpoint[0])
    wider = ae.AutoencoderConfig.from_diffusers({**config.to_diffusers(), "latent_channels": 8})
    with pytest.raises(ValueError, match=r"wrong shape: decoder/conv_in/kernel expected"):
        save_autoencoder(tmp_path, wider, params)
    no_attention = ae.AutoencoderConfig.from_diffusers(
        {**config.to_diffusers(), "mid_block_add_attention": False}
    )
    with pytest.raises(ValueError, match=r"Missing: none\. Unexpected: decoder/mid_block/attent"):
        params_to_diffusers(params, no_attention)
    assert not (tmp_path / CONFIG_FILE).exists()
