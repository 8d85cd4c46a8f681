"""Scaled dot-product attention over heads, by the implementation model.attention_impl names.

Inputs are [B, T, C] token streams; heads are split inside and kept on their tensor-parallel
devices (logical axis 'heads', see sharding.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from models import flash_attention
from models.logical import constrain

# model.attention_impl: `implementation=` of jax.nn.dot_product_attention. None lets JAX choose;
# "cudnn" (fused flash attention) needs a GPU and bf16 / fp16 inputs; "pallas_tpu" is JAX's Pallas
# flash-attention kernel for TPU (models/flash_attention.py), on CPU only in interpret mode.
ATTENTION_IMPLS = (None, "xla", "cudnn", "pallas_tpu")


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    num_heads: int,
    mask: jax.Array | None = None,
    *,
    implementation: str | None = None,
) -> jax.Array:
    """Scaled dot-product attention [B, T, C] x [B, S, C] -> [B, T, C] split into heads.

    `implementation` is an ATTENTION_IMPLS entry: jax.nn.dot_product_attention's argument, or
    "pallas_tpu" (models/flash_attention.py), which takes masks over the keys only: `mask`
    broadcastable from [B, 1, 1, S].
    """
    batch, length, channels = query.shape
    head_dim = channels // num_heads
    per_head = ("batch", None, "heads", None)  # each tensor-parallel device keeps its heads

    def split(a: jax.Array) -> jax.Array:
        return constrain(a.reshape(a.shape[0], a.shape[1], num_heads, head_dim), per_head)

    if implementation == "pallas_tpu":
        key_mask = None if mask is None else _key_mask(mask, batch, key.shape[1])
        out = flash_attention.attention(split(query), split(key), split(value), key_mask)
    else:
        out = jax.nn.dot_product_attention(
            split(query), split(key), split(value), mask=mask, implementation=implementation
        )
    return constrain(out, per_head).reshape(batch, length, channels)


def _key_mask(mask: jax.Array, batch: int, key_length: int) -> jax.Array:
    """bool [B, S] from an attention mask that masks keys only ([B or 1, 1, 1, S or 1])."""
    if mask.ndim != 4 or mask.shape[1:3] != (1, 1):
        raise ValueError(
            f"model.attention_impl='pallas_tpu' takes masks over the keys only ([B, 1, 1, S]); "
            f"got a mask of shape {mask.shape}."
        )
    return jnp.broadcast_to(mask[:, 0, 0, :], (batch, key_length)).astype(bool)
