"""diffusers-format AutoencoderKL directories: config.json + diffusion_pytorch_model.safetensors.

Our parameter paths mirror diffusers' module names (`models/autoencoder_blocks.py`), so a tensor
name is the path joined with '.', the leaf renamed (kernel / scale -> weight). Layouts differ:
conv kernels are [O, I, kH, kW] in torch and [kH, kW, I, O] here, linear weights [O, I] and
[I, O]. Tensors are read and written with `safetensors.numpy` only (no torch, no pickle).
Checkpoints written before diffusers 0.14 (still on the Hub for some SD 1.x VAEs) name the
mid-block attention `query / key / value / proj_attn`, sometimes as 1x1 conv kernels
[O, I, 1, 1]; both are read.
"""

from __future__ import annotations

import json
import os
import re

import jax.numpy as jnp
import numpy as np
from etils.epath import Path

import paths
from errors import ConfigError
from models.autoencoder import AutoencoderConfig, build_autoencoder
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

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
EXPECTED_FILES = f"{CONFIG_FILE} and {WEIGHTS_FILE}"
# Pre-0.14 attention names -> today's (diffusers' ModelMixin._fix_state_dict_keys_on_load).
LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_NAME = re.compile(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)")

ParamPath = tuple  # (key, key, ..., leaf name); list entries have int keys


def load_autoencoder(directory: str | os.PathLike) -> tuple[AutoencoderConfig, Params]:
    """Reads a diffusers AutoencoderKL directory as (config, float32 params dict)."""
    directory = _check_directory(Path(directory))
    config_path = directory / CONFIG_FILE
    try:
        config = AutoencoderConfig.from_diffusers(json.loads(config_path.read_text()))
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


def save_autoencoder(
    directory: str | os.PathLike, config: AutoencoderConfig, params: Params
) -> Path:
    """Writes config.json and the safetensors file that diffusers' `from_pretrained` reads."""
    tensors = params_to_diffusers(params, config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config.to_diffusers(), indent=2, sort_keys=True) + "\n"
    (directory / CONFIG_FILE).write_text(text)
    paths.save_safetensors(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    return directory


def params_from_diffusers(tensors: dict[str, np.ndarray], config: AutoencoderConfig) -> Params:
    """diffusers tensor name -> torch-layout array, to our params for `config`.

    Raises:
      ValueError: naming missing and unexpected tensors, or tensors of the wrong shape (with
        the expected and the found torch shapes).
    """
    tensors = _rename_legacy(tensors)
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
        for name, (path, shape) in expected.items()
        if not fits(tensors[name].shape, torch_shape(shape))
    ]
    if wrong:
        raise ValueError(f"Checkpoint tensors with the wrong shape: {listed(wrong)}.")
    flat = {
        path: jnp.asarray(from_torch(tensors[name], len(shape)), jnp.float32)
        for name, (path, shape) in expected.items()
    }
    return unflatten(flat)


def params_to_diffusers(params: Params, config: AutoencoderConfig) -> dict[str, np.ndarray]:
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


def expected_tensors(config: AutoencoderConfig) -> dict[str, tuple[ParamPath, tuple[int, ...]]]:
    """diffusers tensor name -> (our parameter path, our shape) for `config`."""
    abstract = functionalize(build_autoencoder(config)).abstract_params
    return {
        ".".join(str(key) for key in path[:-1]) + "." + LEAF_NAMES[path[-1]]: (path, leaf.shape)
        for path, leaf in flatten(abstract).items()
    }


def _rename_legacy(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pre-0.14 attention names -> today's; refuses a checkpoint holding both for one tensor."""
    renamed: dict[str, np.ndarray] = {}
    legacy = {}
    for name, array in tensors.items():
        match = _LEGACY_NAME.fullmatch(name)
        if match:
            block, old, leaf = match.groups()
            legacy[f"{block}.{LEGACY_ATTENTION[old]}.{leaf}"] = (name, array)
        else:
            renamed[name] = array
    both = sorted(f"{old} and {new}" for new, (old, _) in legacy.items() if new in renamed)
    if both:
        raise ValueError(f"Checkpoint has old and new names for one tensor: {listed(both)}.")
    renamed.update({new: array for new, (_, array) in legacy.items()})
    return renamed


def _check_directory(directory: Path) -> Path:
    """The directory, after checking that both files are there."""
    if not directory.is_dir():
        raise FileNotFoundError(
            f"Autoencoder directory {str(directory)!r} does not exist (or is not a directory); "
            f"expected a diffusers AutoencoderKL directory with {EXPECTED_FILES}."
        )
    found = sorted(entry.name for entry in directory.iterdir())
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if name not in found]
    if missing:
        hint = ""
        if "vae" in found:
            hint = f" A pipeline's VAE lives in its 'vae' folder: {str(directory / 'vae')!r}?"
        elif any(name.endswith(".bin") for name in found):
            hint = " Pickled .bin weights are not read; convert them to safetensors."
        raise FileNotFoundError(
            f"Autoencoder directory {str(directory)!r} is missing {', '.join(missing)}; "
            f"expected {EXPECTED_FILES}; found {found}.{hint}"
        )
    return directory
