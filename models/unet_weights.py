"""diffusers-format UNet2DConditionModel directories (a Stable Diffusion pipeline's `unet/`):
config.json + diffusion_pytorch_model.safetensors.

Our module tree is the DDPM U-Net's (flat lists of ResBlocks and attention blocks along the down
and up paths), not diffusers' (`down_blocks.{level}.resnets.{i}`), so `block_names(config)`
spells out, from the config, which diffusers module each of our blocks is. Layouts and checks
are those of `models/autoencoder_weights.py`: conv kernels [O, I, kH, kW] in torch and
[kH, kW, I, O] here, linear weights [O, I] and [I, O]; SD 1.x stores the transformer's proj_in /
proj_out as 1x1 convs, SD 2.x as linear layers (`use_linear_projection`). Tensors are read and
written with `safetensors.numpy` only (no torch, no pickle). A 9-channel inpainting U-Net is the
same network with a wider conv_in.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from etils.epath import Path

import paths
from errors import ConfigError
from models.autoencoder_weights import (
    CONFIG_FILE,
    EXPECTED_FILES,
    WEIGHTS_FILE,
    ParamPath,
)
from models.functional import Params, flatten, functionalize, unflatten
from models.torch_layout import (
    LEAF_NAMES,
    fits,
    from_torch,
    listed,
    show_path,
    to_torch,
    torch_shape,
)
from models.unet import UNet, UNetConfig

# Our sub-module path inside a block ('/'-joined) -> diffusers' name inside the same block.
_LAYER = {"": ""}
_RESAMPLER = {"conv": "conv"}
_TIME_MLP = {"dense_in": "linear_1", "dense_out": "linear_2"}
_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "embed_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "skip": "conv_shortcut",
}
_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "out": "to_out.0"}
_BLOCK = "transformer_blocks.0"  # a SpatialTransformer holds one BasicTransformerBlock
_TRANSFORMER = {
    "norm": "norm",
    "proj_in": "proj_in",
    "proj_out": "proj_out",
    "norm_self": f"{_BLOCK}.norm1",
    "norm_cross": f"{_BLOCK}.norm2",
    "norm_ff": f"{_BLOCK}.norm3",
    "feed_forward/proj": f"{_BLOCK}.ff.net.0.proj",  # GEGLU's input projection
    "feed_forward/out": f"{_BLOCK}.ff.net.2",  # net.1 is a dropout
    **{f"self_attention/{ours}": f"{_BLOCK}.attn1.{name}" for ours, name in _ATTENTION.items()},
    **{f"cross_attention/{ours}": f"{_BLOCK}.attn2.{name}" for ours, name in _ATTENTION.items()},
}

BlockNames = dict[ParamPath, tuple[str, dict[str, str]]]


def load_unet(directory: str | os.PathLike) -> tuple[UNetConfig, Params]:
    """Reads a diffusers UNet2DConditionModel directory as (config, float32 params dict)."""
    directory = _check_directory(Path(directory))
    config_path = directory / CONFIG_FILE
    try:
        config = UNetConfig.from_diffusers(json.loads(config_path.read_text()))
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(config_path)!r} is not valid JSON: {error}") from error
    except ConfigError as error:
        raise ConfigError(f"{str(config_path)!r}: {error}") from error
    weights_path = directory / WEIGHTS_FILE
    try:
        return config, params_from_diffusers(paths.read_safetensors(weights_path), config)
    except ValueError as error:
        raise ValueError(
            f"{str(weights_path)!r} does not fit its {CONFIG_FILE}: {error}"
        ) from error


def save_unet(directory: str | os.PathLike, config: UNetConfig, params: Params) -> Path:
    """Writes config.json and the safetensors file that diffusers' `from_pretrained` reads;
    checks everything before writing anything."""
    text = json.dumps(config.to_diffusers(), indent=2, sort_keys=True) + "\n"
    tensors = params_to_diffusers(params, config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(text)
    paths.save_safetensors(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    return directory


def params_from_diffusers(tensors: dict[str, np.ndarray], config: UNetConfig) -> Params:
    """diffusers tensor name -> torch-layout array, to our params for `config`.

    Raises:
      ValueError: naming missing and unexpected tensors, or tensors of the wrong shape (with
        the expected and the found torch shapes).
    """
    expected = expected_tensors(config)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint tensors do not match the config. Missing: {listed(missing)}. "
            f"Unexpected: {listed(unexpected)}."
        )
    wrong = [
        f"{name} expected {torch_shape(shape)} got {tuple(tensors[name].shape)}"
        for name, (_, shape) in expected.items()
        if not fits(tensors[name].shape, torch_shape(shape))
    ]
    if wrong:
        raise ValueError(f"Checkpoint tensors with the wrong shape: {listed(wrong)}.")
    flat = {
        path: jnp.asarray(from_torch(tensors[name], len(shape)), jnp.float32)
        for name, (path, shape) in expected.items()
    }
    return unflatten(flat)


def params_to_diffusers(params: Params, config: UNetConfig) -> dict[str, np.ndarray]:
    """Our params -> diffusers tensor name -> contiguous torch-layout float32 array."""
    expected = expected_tensors(config)
    expected_paths = {path for path, _ in expected.values()}
    given = flatten(params)
    unknown = sorted(show_path(path) for path in given if path not in expected_paths)
    absent = sorted(show_path(path) for path in expected_paths if path not in given)
    if unknown or absent:
        raise ValueError(
            f"Params do not match the config. Missing: {listed(absent)}. "
            f"Unexpected: {listed(unknown)}."
        )
    wrong = [
        f"{show_path(path)} expected {shape} got {tuple(given[path].shape)}"
        for path, shape in expected.values()
        if tuple(given[path].shape) != shape
    ]
    if wrong:
        raise ValueError(f"Params with the wrong shape: {listed(wrong)}.")
    return {
        name: np.ascontiguousarray(to_torch(np.asarray(given[path], np.float32)))
        for name, (path, _) in expected.items()
    }


def expected_tensors(config: UNetConfig) -> dict[str, tuple[ParamPath, tuple[int, ...]]]:
    """diffusers tensor name -> (our parameter path, our shape) for `config`."""
    abstract = functionalize(lambda rngs: UNet(config, rngs=rngs)).abstract_params
    blocks = block_names(config)
    return {
        diffusers_name(path, blocks): (path, leaf.shape) for path, leaf in flatten(abstract).items()
    }


def diffusers_name(path: ParamPath, blocks: BlockNames) -> str:
    """The diffusers tensor name of our parameter at `path`."""
    depth = 2 if isinstance(path[1], int) else 1  # list entries have int keys
    if path[:depth] not in blocks:
        raise ValueError(f"{show_path(path)} has no diffusers UNet2DConditionModel counterpart.")
    prefix, inner_names = blocks[path[:depth]]
    inner = inner_names["/".join(str(key) for key in path[depth:-1])]
    return ".".join(part for part in (prefix, inner, LEAF_NAMES[path[-1]]) if part)


def block_names(config: UNetConfig) -> BlockNames:
    """Our block path -> (diffusers module name, our inner path -> diffusers inner name).

    Our down path lists num_res_blocks ResBlocks (and attention blocks) per level, then a
    Downsample after every level but the last; the up path num_res_blocks + 1 per level from the
    lowest resolution up, then an Upsample after every level but the highest, as diffusers'
    down_blocks / up_blocks do.
    """
    levels = len(config.channel_mult)
    blocks: BlockNames = {
        ("conv_in",): ("conv_in", _LAYER),
        ("time_embed",): ("time_embedding", _TIME_MLP),
        ("mid_block1",): ("mid_block.resnets.0", _RESNET),
        ("mid_attn",): ("mid_block.attentions.0", _TRANSFORMER),
        ("mid_block2",): ("mid_block.resnets.1", _RESNET),
        ("norm_out",): ("conv_norm_out", _LAYER),
        ("conv_out",): ("conv_out", _LAYER),
    }
    down = [(level, i) for level in range(levels) for i in range(config.num_res_blocks)]
    for index, (level, i) in enumerate(down):
        blocks[("down_blocks", index)] = (f"down_blocks.{level}.resnets.{i}", _RESNET)
        blocks[("down_attn", index)] = (f"down_blocks.{level}.attentions.{i}", _TRANSFORMER)
    # Up blocks count from the lowest resolution, in diffusers' up_blocks as in our lists.
    up = [(block, i) for block in range(levels) for i in range(config.num_res_blocks + 1)]
    for index, (block, i) in enumerate(up):
        blocks[("up_blocks", index)] = (f"up_blocks.{block}.resnets.{i}", _RESNET)
        blocks[("up_attn", index)] = (f"up_blocks.{block}.attentions.{i}", _TRANSFORMER)
    for block in range(levels - 1):
        blocks[("downsamplers", block)] = (f"down_blocks.{block}.downsamplers.0", _RESAMPLER)
        blocks[("upsamplers", block)] = (f"up_blocks.{block}.upsamplers.0", _RESAMPLER)
    return blocks


def _check_directory(directory: Path) -> Path:
    """The directory, after checking that both files are there."""
    if not directory.is_dir():
        raise FileNotFoundError(
            f"U-Net directory {str(directory)!r} does not exist (or is not a directory); "
            f"expected a diffusers UNet2DConditionModel directory with {EXPECTED_FILES}."
        )
    found = sorted(entry.name for entry in directory.iterdir())
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if name not in found]
    if missing:
        hint = ""
        if "unet" in found:
            hint = f" A pipeline's U-Net lives in its 'unet' folder: {str(directory / 'unet')!r}?"
        elif any(name.endswith(".bin") for name in found):
            hint = " Pickled .bin weights are not read; convert them to safetensors."
        elif any(name.endswith(".safetensors") for name in found):
            hint = f" Only {WEIGHTS_FILE} is read (not variants such as fp16, nor shards)."
        raise FileNotFoundError(
            f"U-Net directory {str(directory)!r} is missing {', '.join(missing)}; "
            f"expected {EXPECTED_FILES}; found {found}.{hint}"
        )
    return directory
