"""Pieces the text encoders share: named-axis layers, activations, attention, pooling.

Parameters carry the logical axis names of `models/layers.py` ('vocab', 'embed', 'heads',
'mlp', 'norm'), so `sharding.py` can place a large frozen encoder (T5-XXL) like any network.
Initial values do not matter: every parameter is replaced by a checkpoint tensor.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import partitioned

zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()
normal = nnx.initializers.normal(0.02)

# Hugging Face `hidden_act` / `feed_forward_proj` names (transformers' ACT2FN).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact erf form
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),  # tanh approximation
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # CLIP's sigmoid approximation
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function a Hugging Face config names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def dense(
    in_features: int,
    out_features: int,
    axes: tuple[str, str],
    *,
    use_bias: bool = True,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A Linear layer whose kernel [in, out] and bias carry logical axis names."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        kernel_init=partitioned(normal, axes),
        bias_init=partitioned(zeros, (axes[1],)),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


def embedding(
    num: int, features: int, axes: tuple[str | None, str], *, dtype=jnp.float32, rngs: nnx.Rngs
) -> nnx.Embed:
    """A lookup table [num, features] (token, position or relative-position bias)."""
    return nnx.Embed(
        num,
        features,
        embedding_init=partitioned(normal, axes),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


def layer_norm(features: int, epsilon: float, *, dtype=jnp.float32, rngs: nnx.Rngs):
    """LayerNorm with two-pass variance (as torch), so tiny eps (BERT's 1e-12) stays exact."""
    return nnx.LayerNorm(
        features,
        epsilon=epsilon,
        use_fast_variance=False,
        scale_init=partitioned(ones, ("norm",)),
        bias_init=partitioned(zeros, ("norm",)),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


def rms_norm(features: int, epsilon: float, *, dtype=jnp.float32, rngs: nnx.Rngs):
    """Scale-only RMS norm: x / sqrt(mean(x^2) + eps) * scale (T5LayerNorm)."""
    return nnx.RMSNorm(
        features,
        epsilon=epsilon,
        use_fast_variance=False,
        scale_init=partitioned(ones, ("norm",)),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


class SelfAttention(nnx.Module):
    """Multi-head self-attention: query/key/value projections, attention, output projection."""

    def __init__(
        self,
        features: int,
        num_heads: int,
        head_dim: int,
        *,
        use_bias: bool = True,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        common = dict(use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.query = dense(features, inner, ("embed", "heads"), **common)
        self.key = dense(features, inner, ("embed", "heads"), **common)
        self.value = dense(features, inner, ("embed", "heads"), **common)
        self.out = dense(inner, features, ("heads", "embed"), **common)

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        bias: jax.Array | None = None,
        scale: float | None = None,
        is_causal: bool = False,
    ) -> jax.Array:
        """x [B, L, D]; mask bool broadcastable to [B, H, L, L]; bias added to the logits;
        scale defaults to 1/sqrt(head_dim)."""
        batch, length, _ = x.shape
        split = lambda a: a.reshape(batch, length, self.num_heads, self.head_dim)
        attended = jax.nn.dot_product_attention(
            split(self.query(x)),
            split(self.key(x)),
            split(self.value(x)),
            bias=bias,
            mask=mask,
            scale=scale,
            is_causal=is_causal,
        )
        return self.out(attended.reshape(batch, length, self.num_heads * self.head_dim))


class FeedForward(nnx.Module):
    """act(x W_act) W_out, or gated: (act(x W_act) * x W_linear) W_out (Shazeer 2020)."""

    def __init__(
        self,
        features: int,
        hidden: int,
        act: str,
        *,
        gated: bool = False,
        use_bias: bool = True,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.act = activation(act)
        common = dict(use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.fc_act = dense(features, hidden, ("embed", "mlp"), **common)
        self.fc_linear = dense(features, hidden, ("embed", "mlp"), **common) if gated else None
        self.fc_out = dense(hidden, features, ("mlp", "embed"), **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.act(self.fc_act(x))
        if self.fc_linear is not None:
            h = h * self.fc_linear(x)
        return self.fc_out(h)


def padding_mask(attention_mask: jax.Array) -> jax.Array:
    """[B, L] real-token mask -> [B, 1, 1, L] key mask for `jax.nn.dot_product_attention`."""
    return attention_mask.astype(bool)[:, None, None, :]


def masked_mean(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of hidden [B, L, D] over real tokens -> [B, D] (sentence-transformers' clamp 1e-9)."""
    weights = attention_mask.astype(jnp.float32)[:, :, None]
    total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    return (total / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)).astype(hidden.dtype)
