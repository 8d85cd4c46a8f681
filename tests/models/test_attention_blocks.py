"""models/attention_blocks.py: the U-Net and DiT attention blocks."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import attention_blocks


def test_attention_modules_pass_their_impl_on():
    x = jax.random.normal(jax.random.key(0), (1, 16, 8))  # [B, T, C]
    source = jax.random.normal(jax.random.key(1), (1, 3, 6))  # [B, S, C']
    plain = attention_blocks.MultiHeadAttention(8, 6, num_heads=2, rngs=nnx.Rngs(0))
    xla = attention_blocks.MultiHeadAttention(
        8, 6, num_heads=2, attention_impl="xla", rngs=nnx.Rngs(0)
    )
    assert xla.attention_impl == "xla" and plain.attention_impl is None
    out = plain(x, source)
    assert not np.allclose(out, 0.0)
    np.testing.assert_allclose(xla(x, source), out, rtol=1e-6, atol=1e-6)
    # Built anywhere; only a call would need cuDNN.
    common = dict(num_heads=2, num_groups=4, attention_impl="cudnn", rngs=nnx.Rngs(0))
    assert attention_blocks.AttentionBlock(8, **common).attention_impl == "cudnn"
    spatial = attention_blocks.SpatialTransformer(8, 6, **common)
    assert spatial.self_attention.attention_impl == "cudnn"
    assert spatial.cross_attention.attention_impl == "cudnn"


def test_bfloat16_blocks_keep_float32_params():
    rngs = nnx.Rngs(0)
    block = attention_blocks.SpatialTransformer(
        16, 4, num_heads=2, num_groups=8, dtype=jnp.bfloat16, rngs=rngs
    )
    out = block(jnp.ones((1, 4, 4, 16), jnp.bfloat16), context=jnp.ones((1, 3, 4)))
    assert out.dtype == jnp.bfloat16
    params = jax.tree.leaves(nnx.state(block, nnx.Param))
    assert params and all(p.dtype == jnp.float32 for p in params)


def test_spatial_transformer_is_the_identity_at_init_and_reads_its_context():
    block = attention_blocks.SpatialTransformer(16, 6, num_heads=2, num_groups=8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 16))
    context = jax.random.normal(jax.random.key(1), (2, 3, 6))
    np.testing.assert_array_equal(block(x, context), x)  # zero-initialised proj_out
    block.proj_out.kernel.value = jax.random.normal(jax.random.key(2), (16, 16)) * 0.1
    with_context = block(x, context)
    assert not np.allclose(with_context, x)
    assert not np.allclose(with_context, block(x, 2.0 * context))
    assert not np.allclose(with_context, block(x))  # no context: cross-attention skipped


def test_spatial_transformer_conv_projections_are_the_linear_ones_reshaped():
    common = dict(num_heads=2, num_groups=4, qkv_bias=False)
    linear = attention_blocks.SpatialTransformer(8, 6, **common, rngs=nnx.Rngs(0))
    conv = attention_blocks.SpatialTransformer(
        8, 6, linear_projection=False, **common, rngs=nnx.Rngs(0)
    )
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
