"""Public API: load_text_encoder's checks, TextEmbeddings as a pytree, a frozen encode."""

import dataclasses
import shutil
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.text_encoders import ENCODERS, TextEmbeddings, load_text_encoder

TEXTS = ["a photo of a cat", "a dog running in the park"]


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    return load_text_encoder("clip", tiny_clip[0], max_length=12)


def test_unknown_name_lists_allowed_names(tiny_clip):
    with pytest.raises(ValueError) as error:
        load_text_encoder("bert-large", tiny_clip[0], max_length=12)
    message = str(error.value)
    assert "text_encoder.name" in message and "'bert-large'" in message
    assert all(f"'{name}'" in message for name in ENCODERS)


def test_none_loads_nothing():
    assert load_text_encoder("none", "/does/not/matter", max_length=12) is None


def test_missing_directory(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(FileNotFoundError) as error:
        load_text_encoder("t5", missing, max_length=12)
    assert str(missing) in str(error.value) and "model.safetensors" in str(error.value)


def test_missing_model_safetensors(tiny_clip, tmp_path):
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_clip[0] / name, tmp_path / name)
    with pytest.raises(FileNotFoundError) as error:
        load_text_encoder("clip", tmp_path, max_length=12)
    message = str(error.value)
    assert str(tmp_path) in message and "model.safetensors" in message
    assert "found ['config.json', 'tokenizer.json']" in message


def test_wrong_family_and_dtype(tiny_clip):
    with pytest.raises(ValueError, match="model_type 'clip_text_model'"):
        load_text_encoder("t5", tiny_clip[0], max_length=12)
    with pytest.raises(ValueError, match="text_encoder.dtype"):
        load_text_encoder("clip", tiny_clip[0], max_length=12, dtype="float64")


def test_encode_shapes_and_dtypes(encoder):
    embeddings = encoder.encode(TEXTS)
    assert embeddings.tokens.shape == (2, 12, encoder.hidden_size)
    assert embeddings.pooled.shape == (2, encoder.pooled_size)
    assert embeddings.mask.dtype == jnp.bool_ and embeddings.tokens.dtype == jnp.float32
    np.testing.assert_array_equal(embeddings.mask, encoder.tokenize(TEXTS)[1])


def test_text_embeddings_is_a_pytree(encoder):
    embeddings = encoder.encode(TEXTS)
    assert len(jax.tree.leaves(embeddings)) == 3
    doubled = jax.jit(lambda e: jax.tree.map(lambda x: x * 2, e))(embeddings)
    assert isinstance(doubled, TextEmbeddings)
    np.testing.assert_allclose(doubled.pooled, 2 * embeddings.pooled)


def test_encode_is_frozen_but_apply_is_differentiable(encoder):
    input_ids, mask = encoder.tokenize(TEXTS)

    def through_encode(params):
        return jnp.sum(dataclasses.replace(encoder, params=params).encode(TEXTS).pooled ** 2)

    def through_apply(params):
        return jnp.sum(encoder.apply(params, input_ids, mask).pooled ** 2)

    frozen = jax.jit(jax.grad(through_encode))(encoder.params)
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(frozen))
    trainable = jax.jit(jax.grad(through_apply))(encoder.params)
    assert np.any(trainable["final_norm"]["scale"])


def test_encode_compiles_once_per_batch_shape(encoder):
    counted = dataclasses.replace(encoder, forward=chex.assert_max_traces(encoder.forward, n=1))
    first = counted.encode(TEXTS)
    second = counted.encode(["an astronaut riding a horse", "a bowl of fruit"])  # same shape
    assert first.tokens.shape == second.tokens.shape
    with pytest.raises(AssertionError, match="traced > 1 times"):
        counted.encode(TEXTS[:1])  # a new batch size retraces


def test_logical_specs_name_parameter_axes(encoder):
    assert jax.tree.structure(encoder.logical_specs, is_leaf=lambda x: x is None) == (
        jax.tree.structure(encoder.params)
    )
    assert tuple(encoder.logical_specs["token_embedding"]["embedding"]) == ("vocab", "embed")
    assert tuple(encoder.logical_specs["layers"][0]["attention"]["query"]["kernel"]) == (
        "embed",
        "heads",
    )


def test_bfloat16_is_close_to_float32(tiny_clip, encoder):
    half = load_text_encoder("clip", tiny_clip[0], max_length=12, dtype="bfloat16")
    assert half.params["token_embedding"]["embedding"].dtype == jnp.bfloat16
    ours, reference = half.encode(TEXTS), encoder.encode(TEXTS)
    assert ours.tokens.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(ours.pooled, np.float32), reference.pooled, atol=0.1, rtol=0.05
    )


def test_default_path_is_the_shipped_minilm_and_other_encoders_need_a_path(minilm_dir):
    from models.text_encoders import default_path

    assert Path(default_path("minilm")) == minilm_dir
    with pytest.raises(ValueError, match=r"text_encoder\.path is empty; text_encoder\.name='clip'"):
        default_path("clip")


def test_shape_only_reads_config_alone_and_encodes_zeros_of_the_real_shapes(tiny_clip, tmp_path):
    only_config = tmp_path / "clip"
    only_config.mkdir()
    shutil.copy(Path(tiny_clip[0]) / "config.json", only_config / "config.json")
    real = load_text_encoder("clip", tiny_clip[0], max_length=12)
    shape = load_text_encoder("clip", only_config, max_length=12, shape_only=True)
    leaves = jax.tree.leaves(shape.params)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
    assert [leaf.shape for leaf in leaves] == [leaf.shape for leaf in jax.tree.leaves(real.params)]
    want, got = real.encode(TEXTS), shape.encode(TEXTS)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert not np.any(got.tokens) and not np.any(got.pooled) and np.all(got.mask)
