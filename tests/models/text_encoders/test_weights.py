"""Checkpoint directories: file checks, sharded safetensors, renaming tensors to params."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from models.text_encoders import weights
from models.text_encoders.weights import WeightRule

RULES = (
    *weights.linear_rules(r"layers\.(\d+)\.fc", r"layers/\1/fc"),
    WeightRule(r"embed\.weight|tied\.weight", "embedding/embedding"),
)
ABSTRACT = {
    "embedding": {"embedding": jax.ShapeDtypeStruct((5, 3), np.float32)},
    "layers": {
        0: {
            "fc": {
                "kernel": jax.ShapeDtypeStruct((3, 2), np.float32),
                "bias": jax.ShapeDtypeStruct((2,), np.float32),
            }
        }
    },
}


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "embed.weight": rng.normal(size=(5, 3)).astype(np.float32),
        "layers.0.fc.weight": rng.normal(size=(2, 3)).astype(np.float32),  # torch [out, in]
        "layers.0.fc.bias": rng.normal(size=(2,)).astype(np.float32),
    }


def _write_dir(directory, *, weights_file=True):
    (directory / "config.json").write_text("{}")
    (directory / "tokenizer.json").write_text("{}")
    if weights_file:
        save_file(_tensors(), directory / "model.safetensors")
    return directory


def test_missing_directory_names_path_and_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as error:
        weights.check_checkpoint_dir(missing)
    assert str(missing) in str(error.value) and "model.safetensors" in str(error.value)


def test_missing_weights_lists_expected_and_found(tmp_path):
    _write_dir(tmp_path, weights_file=False)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as error:
        weights.check_checkpoint_dir(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "missing model.safetensors" in message
    assert "tokenizer.json" in message and "pytorch_model.bin" in message  # found files
    assert "not read" in message  # never unpickled


def test_complete_directory_reads(tmp_path):
    directory = _write_dir(tmp_path)
    assert weights.check_checkpoint_dir(directory) == directory
    assert weights.read_config(directory) == {}
    assert sorted(weights.read_tensors(directory)) == sorted(_tensors())


def test_invalid_config_json(tmp_path):
    directory = _write_dir(tmp_path)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        weights.read_config(directory)


def test_sharded_checkpoint(tmp_path):
    _write_dir(tmp_path, weights_file=False)
    tensors = _tensors()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[:1],
        "model-00002-of-00002.safetensors": names[1:],
    }
    for shard, shard_names in shards.items():
        save_file({name: tensors[name] for name in shard_names}, tmp_path / shard)
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    weights.check_checkpoint_dir(tmp_path)
    loaded = weights.read_tensors(tmp_path)
    assert sorted(loaded) == names
    np.testing.assert_array_equal(loaded["layers.0.fc.weight"], tensors["layers.0.fc.weight"])
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        weights.read_tensors(tmp_path)


def test_to_params_renames_and_transposes():
    tensors = _tensors()
    params = weights.to_params(tensors, RULES, ABSTRACT)
    assert jax.tree.structure(params) == jax.tree.structure(ABSTRACT)
    np.testing.assert_array_equal(
        params["layers"][0]["fc"]["kernel"], tensors["layers.0.fc.weight"].T
    )
    np.testing.assert_array_equal(params["layers"][0]["fc"]["bias"], tensors["layers.0.fc.bias"])
    np.testing.assert_array_equal(params["embedding"]["embedding"], tensors["embed.weight"])


def test_to_params_ignores_and_accepts_equal_tied_copies():
    tensors = _tensors() | {"tied.weight": _tensors()["embed.weight"], "buffer.ids": np.arange(3)}
    params = weights.to_params(tensors, RULES, ABSTRACT, ignored=[r"buffer\..*"])
    np.testing.assert_array_equal(params["embedding"]["embedding"], tensors["embed.weight"])


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t: t | {"extra.weight": np.zeros(2)},
            r"Unknown checkpoint tensors.*: extra.weight",
        ),
        (lambda t: {k: v for k, v in t.items() if k != "layers.0.fc.bias"}, "missing .*fc/bias"),
        (
            lambda t: t | {"layers.1.fc.bias": np.zeros(2)},
            "no matching parameter.*layers.1.fc.bias",
        ),
        (lambda t: t | {"embed.weight": np.zeros((4, 3))}, r"shape.*embed.weight \(4, 3\)"),
        (lambda t: t | {"tied.weight": np.ones((5, 3))}, "differ: embed.weight vs tied.weight"),
    ],
    ids=["unknown", "missing", "unexpected", "shape", "conflicting-tied"],
)
def test_to_params_errors_name_the_tensors(change, message):
    with pytest.raises(ValueError, match=message):
        weights.to_params(change(_tensors()), RULES, ABSTRACT)
