import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import layers


def test_timestep_embedding_matches_the_formula():
    t = jnp.array([0.0, 1.0, 17.0, 999.0])
    dim = 8
    emb = np.asarray(layers.timestep_embedding(t, dim))
    half = dim // 2
    for row, step in enumerate(np.asarray(t)):
        for i in range(half):
            freq = math.exp(-math.log(10_000) * i / (half - 1))
            assert math.isclose(emb[row, i], math.sin(step * freq), abs_tol=1e-4)
            assert math.isclose(emb[row, half + i], math.cos(step * freq), abs_tol=1e-4)


def test_timestep_embedding_takes_int_steps_pads_odd_dims_and_rejects_tiny_dims():
    steps = jnp.array([0, 3, 250])
    np.testing.assert_array_equal(
        layers.timestep_embedding(steps, 16), layers.timestep_embedding(steps.astype(float), 16)
    )
    odd = layers.timestep_embedding(steps, 9)
    assert odd.shape == (3, 9)
    np.testing.assert_array_equal(odd[:, :8], layers.timestep_embedding(steps, 8))
    np.testing.assert_array_equal(odd[:, 8], 0.0)
    with pytest.raises(ValueError, match="dim >= 4"):
        layers.timestep_embedding(steps, 2)


def test_attention_matches_explicit_softmax():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 8)) for i in range(3))
    out = layers.attention(q, k, v, num_heads=2)
    qh, kh, vh = (a.reshape(2, 5, 2, 4).transpose(0, 2, 1, 3) for a in (q, k, v))
    weights = jax.nn.softmax(qh @ kh.transpose(0, 1, 3, 2) / 2.0, axis=-1)
    expected = (weights @ vh).transpose(0, 2, 1, 3).reshape(2, 5, 8)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_mask", [False, True])
def test_xla_attention_impl_matches_jaxs_choice(with_mask):
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 8)) for i in range(3))
    mask = jnp.array([True, True, False, True, False])[None, None, None, :] if with_mask else None
    chosen = layers.attention(q, k, v, num_heads=2, mask=mask)
    xla = layers.attention(q, k, v, num_heads=2, mask=mask, implementation="xla")
    np.testing.assert_allclose(xla, chosen, rtol=1e-6, atol=1e-6)


def test_attention_modules_pass_their_impl_on():
    x = jax.random.normal(jax.random.key(0), (1, 16, 8))  # [B, T, C]
    source = jax.random.normal(jax.random.key(1), (1, 3, 6))  # [B, S, C']
    plain = layers.MultiHeadAttention(8, 6, num_heads=2, rngs=nnx.Rngs(0))
    xla = layers.MultiHeadAttention(8, 6, num_heads=2, attention_impl="xla", rngs=nnx.Rngs(0))
    assert xla.attention_impl == "xla" and plain.attention_impl is None
    out = plain(x, source)
    assert not np.allclose(out, 0.0)
    np.testing.assert_allclose(xla(x, source), out, rtol=1e-6, atol=1e-6)
    # Built anywhere; only a call would need cuDNN.
    common = dict(num_heads=2, num_groups=4, attention_impl="cudnn", rngs=nnx.Rngs(0))
    assert layers.AttentionBlock(8, **common).attention_impl == "cudnn"
    spatial = layers.SpatialTransformer(8, 6, **common)
    assert spatial.self_attention.attention_impl == "cudnn"
    assert spatial.cross_attention.attention_impl == "cudnn"


def test_resample_shapes_and_every_param_is_named():
    rngs = nnx.Rngs(0)
    x = jnp.ones((1, 8, 8, 16))
    assert layers.Downsample(16, rngs=rngs)(x).shape == (1, 4, 4, 16)
    assert layers.Upsample(16, rngs=rngs)(x).shape == (1, 16, 16, 16)
    block = layers.ResBlock(16, 32, 64, num_groups=8, dropout=0.0, rngs=rngs)
    assert block(x, jnp.ones((1, 64))).shape == (1, 8, 8, 32)
    specs = jax.tree.leaves(
        nnx.get_partition_spec(nnx.state(block, nnx.Param)), is_leaf=lambda s: s is not None
    )
    assert specs and all(spec is not None and len(tuple(spec)) > 0 for spec in specs)


def test_bfloat16_blocks_keep_float32_params():
    rngs = nnx.Rngs(0)
    block = layers.SpatialTransformer(
        16, 4, num_heads=2, num_groups=8, dtype=jnp.bfloat16, rngs=rngs
    )
    out = block(jnp.ones((1, 4, 4, 16), jnp.bfloat16), context=jnp.ones((1, 3, 4)))
    assert out.dtype == jnp.bfloat16
    params = jax.tree.leaves(nnx.state(block, nnx.Param))
    assert params and all(p.dtype == jnp.float32 for p in params)


def test_spatial_transformer_is_the_identity_at_init_and_reads_its_context():
    block = layers.SpatialTransformer(16, 6, num_heads=2, num_groups=8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 16))
    context = jax.random.normal(jax.random.key(1), (2, 3, 6))
    np.testing.assert_array_equal(block(x, context), x)  # zero-initialised proj_out
    block.proj_out.kernel.value = jax.random.normal(jax.random.key(2), (16, 16)) * 0.1
    with_context = block(x, context)
    assert not np.allclose(with_context, x)
    assert not np.allclose(with_context, block(x, 2.0 * context))
    assert not np.allclose(with_context, block(x))  # no context: cross-attention skipped


@pytest.mark.parametrize("flip_sin_to_cos, freq_shift", [(True, 0), (False, 0), (True, 1)])
def test_timestep_embedding_flavours_match_the_formula(flip_sin_to_cos, freq_shift):
    """diffusers' `Timesteps(dim, flip_sin_to_cos, downscale_freq_shift)`, written out."""
    t = np.array([0.0, 1.0, 17.0, 999.0])
    dim, half = 8, 4
    emb = layers.timestep_embedding(
        jnp.asarray(t), dim, flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift
    )
    angles = t[:, None] * np.exp(-math.log(10_000) * np.arange(half) / (half - freq_shift))
    waves = (
        [np.cos(angles), np.sin(angles)] if flip_sin_to_cos else [np.sin(angles), np.cos(angles)]
    )
    np.testing.assert_allclose(emb, np.concatenate(waves, axis=-1), atol=1e-4)
    assert layers.timestep_embedding(jnp.asarray(t), 2, freq_shift=0).shape == (4, 2)


@pytest.mark.parametrize("padding, pads", [(0, ((0, 1), (0, 1))), (1, ((1, 1), (1, 1)))])
def test_downsample_padding_pads_where_it_says(padding, pads):
    """0: one zero row / column at the bottom / right (TensorFlow 'SAME'); 1: on every side."""
    block = layers.Downsample(4, padding=padding, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
    expected = jax.lax.conv_general_dilated(
        jnp.pad(x, ((0, 0), *pads, (0, 0))),
        block.conv.kernel[...],
        (2, 2),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(block(x), expected + block.conv.bias[...], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="padding=2"):
        layers.Downsample(4, padding=2, rngs=nnx.Rngs(0))


def test_spatial_transformer_conv_projections_are_the_linear_ones_reshaped():
    common = dict(num_heads=2, num_groups=4, qkv_bias=False)
    linear = layers.SpatialTransformer(8, 6, **common, rngs=nnx.Rngs(0))
    conv = layers.SpatialTransformer(8, 6, linear_projection=False, **common, rngs=nnx.Rngs(0))
    assert linear.self_attention.query.bias is None  # qkv_bias=False
    params = nnx.to_pure_dict(nnx.state(linear, nnx.Param))
    params["proj_out"]["kernel"] = jax.random.normal(jax.random.key(3), (8, 8))  # not zero
    nnx.update(linear, params)
    for name in ("proj_in", "proj_out"):
        params[name]["kernel"] = params[name]["kernel"][None, None]  # [1, 1, I, O]
    nnx.update(conv, params)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    context = jax.random.normal(jax.random.key(1), (2, 3, 6))
    np.testing.assert_allclose(conv(x, context), linear(x, context), rtol=1e-5, atol=1e-6)
    assert not np.allclose(linear(x, context), x)
