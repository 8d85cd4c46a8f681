"""Attention through JAX's Pallas TPU flash-attention kernel: model.attention_impl='pallas_tpu'.

`jax.experimental.pallas.ops.tpu.flash_attention` (Dao et al. 2022's tiling, in Pallas/Mosaic)
never builds the [T, S] score matrix in HBM: forward and backward keep O(T + S) memory per head
instead of O(T * S), which is what matters for long attention (a Stable-Diffusion U-Net at 64x64
latents attends over 4096 tokens, a DiT at high resolution over as many or more).

The kernel needs tiles: key lengths a multiple of its key block, blocks a multiple of 128 lanes.
Here every sequence is zero-padded to a multiple of its block (the largest of 512 / 256 / 128 that
divides the padded length), the padded keys are masked with segment ids (queries have id 1, real
keys 1, padded or masked keys 0) and the padded queries are cut off again. So any length works,
short ones included: text cross-attention (77 CLIP tokens, 12 MiniLM tokens) pads its keys to
128, and an 8x8 map pads its 64 queries to 128 (waste the kernel can afford; at such lengths the
plain XLA path is as good, but one attention_impl should mean one kernel everywhere). A query
row whose keys are all masked gets what jax.nn.dot_product_attention gives it (the mean of the
values over the S keys), so the two implementations agree everywhere.

The kernel is a Mosaic custom call that XLA's SPMD partitioner cannot split ("Mosaic kernels
cannot be automatically partitioned"; `jax.experimental.custom_partitioning` does not help:
it is not wired on TPU, jax-ml/jax#38196): under a sharded jit it must run per device, in a
shard_map over the batch and heads axes, which `logical.per_device` asks of the caller's mesh
(sharding.activation_constraints). On CPU the kernel only runs interpreted (`interpret()`: the
tests); on TPU the compiled kernel runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash

from models import logical

LANES = 128  # a TPU vector register's lanes: key blocks (and so every block here) multiply this
BLOCKS = (512, 256, 128)  # tile lengths tried, largest first


@contextlib.contextmanager
def interpret() -> Iterator[None]:
    """Within the block, Pallas TPU kernels traced run interpreted (the way to run them on CPU):
    `True` selects Pallas' HLO interpreter, ~2x faster to compile and run here than the TPU
    simulation of `pltpu.InterpretParams()`, which gives the same numbers."""
    with pltpu.force_tpu_interpret_mode(True):
        yield


def block_and_padded_length(length: int) -> tuple[int, int]:
    """(tile length, padded length) for a sequence of `length`: padded to a multiple of 128,
    tiled by the largest of BLOCKS dividing that."""
    padded = -(-length // LANES) * LANES
    return next(block for block in BLOCKS if padded % block == 0), padded


def attention(
    query: jax.Array, key: jax.Array, value: jax.Array, key_mask: jax.Array | None = None
) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v per head, through the Pallas TPU flash-attention kernel.

    Args:
      query: [B, T, H, D] (jax.nn.dot_product_attention's layout).
      key, value: [B, S, H, D].
      key_mask: bool [B, S], True on the keys each query may attend to; None: all of them.

    Returns:
      [B, T, H, D] in the query's dtype.
    """
    per_head = ("batch", None, "heads", None)
    local = logical.per_device(
        _local_attention, (per_head, per_head, per_head, ("batch", None)), per_head
    )
    return local(query, key, value, key_mask)


def _local_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, key_mask: jax.Array | None
) -> jax.Array:
    """`attention` on one device's arrays."""
    batch, length, _, head_dim = query.shape
    key_length = key.shape[1]
    block_q, padded_q = block_and_padded_length(length)
    block_k, padded_k = block_and_padded_length(key_length)

    def to_kernel(a: jax.Array, padded: int) -> jax.Array:  # [B, L, H, D] -> [B, H, L', D]
        a = a.transpose(0, 2, 1, 3)
        return jnp.pad(a, ((0, 0), (0, 0), (0, padded - a.shape[2]), (0, 0)))

    segment_ids = None
    if key_mask is not None or padded_k != key_length:
        real = jnp.ones((batch, key_length), bool) if key_mask is None else key_mask
        key_ids = jnp.pad(real.astype(jnp.int32), ((0, 0), (0, padded_k - key_length)))
        segment_ids = pallas_flash.SegmentIds(jnp.ones((batch, padded_q), jnp.int32), key_ids)
    blocks = pallas_flash.BlockSizes(
        block_q=block_q,
        block_k_major=block_k,
        block_k=block_k,
        block_b=1,
        block_q_major_dkv=block_q,
        block_k_major_dkv=block_k,
        block_k_dkv=block_k,
        block_q_dkv=block_q,
        block_k_major_dq=block_k,
        block_k_dq=block_k,
        block_q_dq=block_q,
    )
    out = pallas_flash.flash_attention(
        to_kernel(query, padded_q),
        to_kernel(key, padded_k),
        to_kernel(value, padded_k),
        segment_ids=segment_ids,
        sm_scale=head_dim**-0.5,
        block_sizes=blocks,
    )
    out = out[:, :, :length].transpose(0, 2, 1, 3)  # [B, T, H, D]
    if key_mask is None:
        return out
    # No key to attend: jax.nn.dot_product_attention's masked softmax is uniform over the S keys.
    uniform = value.mean(axis=1, keepdims=True).astype(out.dtype)  # [B, 1, H, D]
    return jnp.where(key_mask.any(axis=-1)[:, None, None, None], out, uniform)
