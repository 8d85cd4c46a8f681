"""diffusers-format UNet2DConditionModel directories: parity with diffusers' forward pass on
tiny SD 1.x / 2.x style U-Nets, load / save round trips, full-size name maps, errors."""

import dataclasses
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.numpy import load_file, save_file

from errors import ConfigError
from models import registry
from models.functional import functionalize
from models.unet import UNet, UNetConfig
from models.unet_weights import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    expected_tensors,
    load_unet,
    params_to_diffusers,
    save_unet,
)
from tests.models.sd_unet_checkpoint import (
    SD1_TINY,
    SD2_TINY,
    SD15_CONFIG,
    SD21_CONFIG,
    full_size,
    torch_unet,
)

pytestmark = pytest.mark.usefixtures("fast_compiles")  # tests/conftest.py
TINY = {"sd1": SD1_TINY, "sd2": SD2_TINY, "sd1_inpainting": {**SD1_TINY, "in_channels": 9}}
TOKENS = 7


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (directory, torch model): the tiny perturbed U-Nets saved by save_pretrained."""
    saved = {}
    for name, config in TINY.items():
        model = torch_unet(config)
        directory = tmp_path_factory.mktemp(name)
        model.save_pretrained(directory)
        saved[name] = directory, model
    return saved


def _inputs(config: dict, seed: int = 0):
    """(latents [B, C, H, W], timesteps [B], text tokens [B, L, D]) as float32 / int numpy."""
    rng = np.random.default_rng(seed)
    size = config["sample_size"]
    latents = rng.standard_normal((2, config["in_channels"], size, size)).astype(np.float32)
    context = rng.standard_normal((2, TOKENS, config["cross_attention_dim"]))
    return latents, np.array([10, 981]), context.astype(np.float32)


def _torch_output(model: UNet2DConditionModel, latents, timesteps, context) -> np.ndarray:
    with torch.no_grad():
        args = (torch.from_numpy(latents), torch.from_numpy(timesteps), torch.from_numpy(context))
        return model(*args).sample.numpy()


def _our_output(config, params, latents, timesteps, context) -> np.ndarray:
    """Our U-Net on the same inputs, NCHW in and out like diffusers'."""
    model = functionalize(lambda rngs: UNet(config, rngs=rngs))
    nhwc = jnp.asarray(latents.transpose(0, 2, 3, 1))
    out = jax.jit(model.apply)(params, nhwc, jnp.asarray(timesteps), context=jnp.asarray(context))
    return np.asarray(out).transpose(0, 3, 1, 2)


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


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


@pytest.mark.parametrize("name", TINY)
def test_output_equals_diffusers(checkpoints, name):
    directory, model = checkpoints[name]
    config, params = load_unet(directory)
    inputs = _inputs(TINY[name])
    reference = _torch_output(model, *inputs)
    assert _relative_error(_our_output(config, params, *inputs), reference) < 1e-4


def test_the_sd_options_are_what_makes_the_outputs_equal(checkpoints):
    """Each option set back to the DDPM default moves the output by far more than 1e-4."""
    directory, model = checkpoints["sd1"]
    config, params = load_unet(directory)
    inputs = _inputs(SD1_TINY)
    reference = _torch_output(model, *inputs)
    for change in ({"downsample_padding": 0}, {"flip_sin_to_cos": False}, {"freq_shift": 1}):
        changed = dataclasses.replace(config, **change)
        assert _relative_error(_our_output(changed, params, *inputs), reference) > 0.01, change


def _read_config(directory) -> UNetConfig:
    return UNetConfig.from_diffusers(json.loads((directory / CONFIG_FILE).read_text()))


def test_configs_read_what_sd_uses_and_write_it_back(checkpoints):
    sd1 = _read_config(checkpoints["sd1"][0])
    assert (sd1.context_dim, sd1.num_heads, sd1.heads_per_level) == (32, 8, ())
    assert (sd1.norm_eps, sd1.flip_sin_to_cos, sd1.freq_shift) == (1e-5, True, 0)
    assert (sd1.downsample_padding, sd1.qkv_bias, sd1.use_linear_projection) == (1, False, False)
    assert (sd1.attention_resolutions, sd1.channel_mult, sd1.dropout) == ((16,), (1, 2), 0.0)
    sd2 = _read_config(checkpoints["sd2"][0])
    assert (sd2.context_dim, sd2.heads_per_level) == (24, (2, 4, 4))
    assert (sd2.attention_resolutions, sd2.use_linear_projection) == ((16, 8), True)
    for config, heads in ((sd1, 8), (sd2, [2, 4, 4])):
        assert config.to_diffusers()["attention_head_dim"] == heads
        assert UNetConfig.from_diffusers(config.to_diffusers()) == config


def test_the_training_config_path_rebuilds_a_loaded_unet(checkpoints):
    """registry.make_model_config (what `config.model` goes through) gives the same config."""
    config = _read_config(checkpoints["sd2"][0])
    fields = registry.model_fields(config)
    rebuilt = registry.make_model_config(fields, image_size=16, channels=4, context_dim=24)
    assert rebuilt == config


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_load_save_load_is_exact_and_diffusers_reads_what_we_save(checkpoints, name, tmp_path):
    directory, model = checkpoints[name]
    config, params = load_unet(directory)
    save_unet(tmp_path, config, params)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    config_again, params_again = load_unet(tmp_path)
    assert config_again == config
    _assert_params_equal(params_again, params)

    reloaded = UNet2DConditionModel.from_pretrained(tmp_path).eval()
    for tensor_name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(reloaded.state_dict()[tensor_name].numpy(), tensor.numpy())
    inputs = _inputs(TINY[name], seed=1)
    np.testing.assert_array_equal(_torch_output(reloaded, *inputs), _torch_output(model, *inputs))


@pytest.mark.parametrize(
    "config, parameters",
    [(SD15_CONFIG, 859_520_964), (SD21_CONFIG, 865_910_724)],
    ids=["sd15", "sd21"],
)
def test_full_size_sd_unets_map_every_tensor_with_its_shape(config, parameters):
    """Stable Diffusion 1.5 / 2.1 configs: our name map and shapes are diffusers' state dict."""
    diffusers_model = full_size({k: v for k, v in config.items() if not k.startswith("_")})
    theirs = {name: tuple(tensor.shape) for name, tensor in diffusers_model.state_dict().items()}

    def torch_layout(shape):  # conv [kH, kW, I, O] -> [O, I, kH, kW]; linear [I, O] -> [O, I]
        return (shape[3], shape[2], *shape[:2]) if len(shape) == 4 else tuple(reversed(shape))

    expected = expected_tensors(UNetConfig.from_diffusers(config))
    ours = {name: torch_layout(shape) for name, (_, shape) in expected.items()}
    assert ours == theirs
    assert sum(math.prod(shape) for shape in ours.values()) == parameters


def test_half_precision_checkpoints_load_as_float32(checkpoints, tmp_path):
    directory, _ = checkpoints["sd1"]
    tensors = {k: v.astype(np.float16) for k, v in load_file(directory / WEIGHTS_FILE).items()}
    _, params = load_unet(_copy(directory, tmp_path, tensors=tensors))
    kernel = params["down_attn"][0]["proj_in"]["kernel"]  # a 1x1 conv in SD 1.x
    assert kernel.dtype == np.float32
    name = "down_blocks.0.attentions.0.proj_in.weight"
    np.testing.assert_array_equal(kernel, tensors[name].astype(np.float32).transpose(2, 3, 1, 0))


def test_missing_directory_or_files_name_what_is_expected(checkpoints, tmp_path):
    with pytest.raises(
        FileNotFoundError, match=rf"'{tmp_path}/absent' does not exist.*{WEIGHTS_FILE}"
    ):
        load_unet(tmp_path / "absent")
    (tmp_path / "unet").mkdir()
    shutil.copy(checkpoints["sd1"][0] / CONFIG_FILE, tmp_path / CONFIG_FILE)
    with pytest.raises(FileNotFoundError, match=rf"is missing {WEIGHTS_FILE}.*'unet' folder"):
        load_unet(tmp_path)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"addition_embed_type": "text_time"}, r"addition_embed_type='text_time' is not suppor"),
        ({"class_embed_type": "timestep"}, r"class_embed_type='timestep' is not supported"),
        ({"num_class_embeds": 10}, r"num_class_embeds=10 is not supported \(class embeddings\)"),
        ({"time_cond_proj_dim": 256}, r"time_cond_proj_dim=256 is not supported \(a guidance"),
        ({"encoder_hid_dim": 32}, r"encoder_hid_dim=32 is not supported"),
        ({"dual_cross_attention": True}, r"dual_cross_attention=True is not supported"),
        ({"transformer_layers_per_block": 2}, r"transformer_layers_per_block=2 is not supp"),
        (
            {"down_block_types": ["AttnDownBlock2D", "DownBlock2D"]},
            r"down_block_types=\['AttnDownBlock2D', 'DownBlock2D'\] is not supported",
        ),
        (
            {"up_block_types": ["UpBlock2D", "UpBlock2D"]},
            r"up_block_types=.* only \['UpBlock2D', 'CrossAttnUpBlock2D'\] \(the down path",
        ),
        (
            {"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"},
            r"mid_block_type='UNetMidBlock2DSimpleCrossAttn' is not supported",
        ),
        ({"layers_per_block": [1, 2]}, r"layers_per_block=\[1, 2\] must be the same at every"),
        ({"sample_size": [16, 24]}, r"sample_size=\[16, 24\] must be the same"),
        ({"block_out_channels": [32, 48]}, r"block_out_channels=\[32, 48\] must be positive mu"),
        ({"_class_name": "UNet2DModel"}, r"_class_name='UNet2DModel' is not supported"),
        ({"mystery_option": 1}, r"Unknown UNet2DConditionModel config keys: mystery_option"),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_config_errors_name_the_file_and_the_key(checkpoints, tmp_path, edit, message):
    directory, _ = checkpoints["sd1"]
    config = {**json.loads((directory / CONFIG_FILE).read_text()), **edit}
    with pytest.raises(ConfigError, match=rf"config\.json.*{message}"):
        load_unet(_copy(directory, tmp_path, config=config))


def _drop_level(tensors):
    for name in [n for n in tensors if n.startswith("up_blocks.1.")]:
        tensors.pop(name)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("conv_out.bias"), r"Missing: conv_out\.bias\. Unexpected: none"),
        (_drop_level, r"Missing: up_blocks\.1\.attentions\.0\.norm\.bias, .* and \d+ more"),
        (
            lambda t: t.update({"add_embedding.linear_1.weight": np.zeros((4, 4), np.float32)}),
            r"Missing: none\. Unexpected: add_embedding\.linear_1\.weight",
        ),
        (
            lambda t: t.update({"conv_in.weight": np.zeros((32, 4, 5, 5), np.float32)}),
            r"wrong shape: conv_in\.weight expected \(32, 4, 3, 3\) got \(32, 4, 5, 5\)",
        ),
    ],
    ids=["missing", "many_missing", "unexpected", "shape"],
)
def test_tensor_errors_name_the_tensors(checkpoints, tmp_path, edit, message):
    directory, _ = checkpoints["sd1"]
    tensors = load_file(directory / WEIGHTS_FILE)
    edit(tensors)
    with pytest.raises(ValueError, match=rf"{WEIGHTS_FILE}' does not fit.*{message}"):
        load_unet(_copy(directory, tmp_path, tensors=tensors))


def test_projections_stored_as_the_config_says(checkpoints, tmp_path):
    """SD 1.x's 1x1-conv proj_in read as linear is the same map; the other way is refused."""
    sd1, sd2 = checkpoints["sd1"][0], checkpoints["sd2"][0]
    config = json.loads((sd1 / CONFIG_FILE).read_text())
    as_linear, params = load_unet(
        _copy(sd1, tmp_path / "a", config={**config, "use_linear_projection": True})
    )
    kernel = params["down_attn"][0]["proj_in"]["kernel"]
    np.testing.assert_array_equal(
        kernel, load_unet(sd1)[1]["down_attn"][0]["proj_in"]["kernel"][0, 0]
    )
    assert as_linear.use_linear_projection
    config = json.loads((sd2 / CONFIG_FILE).read_text())
    with pytest.raises(
        ValueError,
        match=r"wrong shape: down_blocks\.0\.attentions\.0\.proj_in\.weight expected "
        r"\(32, 32, 1, 1\) got \(32, 32\)",
    ):
        load_unet(_copy(sd2, tmp_path / "b", config={**config, "use_linear_projection": False}))


def test_save_refuses_what_diffusers_cannot_hold_and_writes_nothing(checkpoints, tmp_path):
    config, params = load_unet(checkpoints["sd1"][0])
    refusals = [
        (dataclasses.replace(config, qkv_bias=True), r"qkv_bias=True must be False"),
        (dataclasses.replace(config, context_dim=None), r"context_dim=None must be set"),
        (dataclasses.replace(config, num_classes=3), r"num_classes=3 has no UNet2DCondition"),
    ]
    for changed, message in refusals:
        with pytest.raises(ConfigError, match=message):
            save_unet(tmp_path, changed, params)
    wider = dataclasses.replace(config, in_channels=9)
    with pytest.raises(ValueError, match=r"wrong shape: conv_in/kernel expected \(3, 3, 9, 32\)"):
        save_unet(tmp_path, wider, params)
    linear = dataclasses.replace(config, use_linear_projection=True)
    with pytest.raises(ValueError, match=r"wrong shape: down_attn/0/proj_in/kernel expected"):
        params_to_diffusers(params, linear)
    assert not list(tmp_path.iterdir())
