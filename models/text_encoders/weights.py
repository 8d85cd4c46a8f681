"""Hugging Face checkpoint directories: file checks, config.json, safetensors, tensor renaming.

Tensors are read with `safetensors.numpy` only (no torch, no pickle). A family module describes
its checkpoint with `WeightRule`s: a regex over the Hugging Face tensor name and the path of our
parameter it becomes; `to_params` applies them and checks the result against the network's
parameter shapes, so a wrong checkpoint fails with the tensor names at fault.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import jax.numpy as jnp
import numpy as np
from etils.epath import Path

import paths
from models.functional import flatten, unflatten

Params = dict[Any, Any]

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
EXPECTED_FILES = (
    f"{CONFIG_FILE}, {WEIGHTS_FILE} (or a sharded {WEIGHTS_INDEX_FILE}) and {TOKENIZER_FILE}"
)
_MAX_LISTED = 12  # names shown in an error before "... and N more"


def check_checkpoint_dir(
    path: str | os.PathLike, *, with_tokenizer: bool = True, with_weights: bool = True
) -> Path:
    """The checkpoint directory, after checking that the files we read are all there
    (`with_tokenizer=False`: the tokenizer lives elsewhere, as in a diffusers pipeline;
    `with_weights=False`: only the architecture is read)."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"Text encoder checkpoint directory {str(directory)!r} does not exist (or is not a "
            f"directory); expected a Hugging Face directory with {EXPECTED_FILES}."
        )
    found = sorted(entry.name for entry in directory.iterdir())
    wanted = (CONFIG_FILE, TOKENIZER_FILE) if with_tokenizer else (CONFIG_FILE,)
    missing = [name for name in wanted if name not in found]
    if with_weights and WEIGHTS_FILE not in found and WEIGHTS_INDEX_FILE not in found:
        missing.append(WEIGHTS_FILE)
    if missing:
        hint = ""
        if "pytorch_model.bin" in found:
            hint = " Pickled pytorch_model.bin is not read; convert it to safetensors."
        raise FileNotFoundError(
            f"Text encoder checkpoint {str(directory)!r} is missing {', '.join(missing)}; "
            f"expected {EXPECTED_FILES}; found {found}.{hint}"
        )
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    """The parsed config.json of a checkpoint directory."""
    config_path = directory / CONFIG_FILE
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(config_path)!r} is not valid JSON: {error}") from error


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of model.safetensors, or of every shard its index names."""
    if (directory / WEIGHTS_FILE).is_file():
        return paths.read_safetensors(directory / WEIGHTS_FILE)
    index_path = directory / WEIGHTS_INDEX_FILE
    weight_map = json.loads(index_path.read_text()).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{str(index_path)!r} has no 'weight_map' of tensor name -> shard file.")
    shards = sorted(set(weight_map.values()))
    absent = [shard for shard in shards if not (directory / shard).is_file()]
    if absent:
        raise FileNotFoundError(
            f"{str(index_path)!r} names shards that are not in {str(directory)!r}: {absent}."
        )
    tensors: dict[str, np.ndarray] = {}
    for shard in shards:
        tensors.update(paths.read_safetensors(directory / shard))
    return tensors


@dataclasses.dataclass(frozen=True)
class WeightRule:
    """One Hugging Face tensor name pattern and the parameter it becomes."""

    pattern: str  # regex, matched in full against the HF tensor name
    target: str  # our parameter path, '/'-separated; may use the pattern's groups as \1, \2
    transpose: bool = False  # torch Linear weight [out, in] -> our kernel [in, out]


def to_params(
    tensors: dict[str, np.ndarray],
    rules: Iterable[WeightRule],
    abstract_params: Params,
    *,
    ignored: Iterable[str] = (),
) -> Params:
    """Renames checkpoint tensors to the nested param dict of `abstract_params`' shapes/dtypes.

    Args:
      tensors: HF tensor name -> array, as read from safetensors.
      rules: how each HF name maps to our parameter path.
      abstract_params: the network's parameters as ShapeDtypeStructs (nested dict, int keys
        for layer lists); the result has the same tree, cast to its dtypes.
      ignored: regexes (full match) for checkpoint tensors the encoder does not use.

    Raises:
      ValueError: naming unknown tensors, tensors that map to no parameter, missing parameters,
        shape mismatches, or two tensors that map to one parameter with different values.
    """
    rules = tuple(rules)
    ignored = tuple(ignored)
    by_path: dict[tuple, tuple[str, np.ndarray]] = {}
    unknown, conflicting = [], []
    for name in sorted(tensors):
        if any(re.fullmatch(pattern, name) for pattern in ignored):
            continue
        path, array = _apply_rules(name, tensors[name], rules)
        if path is None:
            unknown.append(name)
        elif path in by_path and not np.array_equal(by_path[path][1], array):
            conflicting.append(f"{by_path[path][0]} vs {name}")
        elif path not in by_path:
            by_path[path] = (name, array)
    _raise_if("Unknown checkpoint tensors (no rule maps them)", unknown)
    _raise_if("Checkpoint tensors that map to one parameter but differ", conflicting)

    expected = flatten(abstract_params)
    unexpected = [
        f"{name} -> {_show(path)}" for path, (name, _) in by_path.items() if path not in expected
    ]
    missing = [_show(path) for path in expected if path not in by_path]
    _raise_if("Checkpoint tensors with no matching parameter (config mismatch?)", unexpected)
    _raise_if("Parameters missing from the checkpoint", missing)
    wrong_shape = [
        f"{name} {tuple(array.shape)} -> {_show(path)} {tuple(expected[path].shape)}"
        for path, (name, array) in by_path.items()
        if tuple(array.shape) != tuple(expected[path].shape)
    ]
    _raise_if("Checkpoint tensors whose shape does not match the config", wrong_shape)

    flat = {path: jnp.asarray(array, expected[path].dtype) for path, (_, array) in by_path.items()}
    return unflatten(flat)


def _apply_rules(
    name: str, array: np.ndarray, rules: tuple[WeightRule, ...]
) -> tuple[tuple | None, np.ndarray]:
    for rule in rules:
        match = re.fullmatch(rule.pattern, name)
        if match:
            path = tuple(
                int(part) if part.isdigit() else part
                for part in match.expand(rule.target).split("/")
            )
            return path, (array.T if rule.transpose else array)
    return None, array


def _show(path: tuple) -> str:
    return "/".join(str(key) for key in path)


def _raise_if(what: str, names: list[str]) -> None:
    if names:
        listed = ", ".join(names[:_MAX_LISTED])
        more = f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
        raise ValueError(f"{what}: {listed}{more}.")


def linear_rules(hf_name: str, target: str, *, bias: bool = True) -> tuple[WeightRule, ...]:
    """Rules for a torch Linear `hf_name` (regex) -> our nnx.Linear at `target`."""
    rules = (WeightRule(hf_name + r"\.weight", target + "/kernel", transpose=True),)
    return rules + ((WeightRule(hf_name + r"\.bias", target + "/bias"),) if bias else ())


def norm_rules(hf_name: str, target: str, *, bias: bool = True) -> tuple[WeightRule, ...]:
    """Rules for a torch LayerNorm (weight, bias) -> our norm (scale, bias)."""
    rules = (WeightRule(hf_name + r"\.weight", target + "/scale"),)
    return rules + ((WeightRule(hf_name + r"\.bias", target + "/bias"),) if bias else ())
