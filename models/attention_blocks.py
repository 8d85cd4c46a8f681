"""Attention blocks of the U-Nets and the DiT: DDPM's self-attention, multi-head attention with
projections, and Stable Diffusion's spatial transformer (self-, cross-attention, GEGLU).

Parameters carry logical axis names as in models/layers.py: projections ('embed', 'heads') /
('heads', 'embed'), norms ('norm',).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.attention import attention
from models.layers import conv, dense, group_norm, ones, partitioned, zeros
from models.logical import constrain


class AttentionBlock(nnx.Module):
    """Residual multi-head self-attention over the H*W positions (Ho et al. 2020)."""

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int,
        num_groups: int,
        norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        dtype=jnp.float32,
        attention_impl: str | None = None,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        self.norm = group_norm(channels, num_groups, eps=norm_eps, dtype=dtype, rngs=rngs)
        qkv = dict(axes=("embed", "heads"), use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.query = dense(channels, channels, **qkv)
        self.key = dense(channels, channels, **qkv)
        self.value = dense(channels, channels, **qkv)
        self.out = dense(
            channels, channels, axes=("heads", "embed"), zero_init=True, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array, context=None, context_mask=None) -> jax.Array:
        """Context arguments are accepted (and unused) so every attention block is called alike."""
        batch, height, width, channels = x.shape
        h = self.norm(x).reshape(batch, height * width, channels)
        attended = attention(
            self.query(h),
            self.key(h),
            self.value(h),
            self.num_heads,
            implementation=self.attention_impl,
        )
        return x + self.out(attended).reshape(x.shape)


class MultiHeadAttention(nnx.Module):
    """Projections around `attention`: queries from x, keys/values from `source` (x if None)."""

    def __init__(
        self,
        channels: int,
        source_dim: int,
        *,
        num_heads: int,
        zero_init_out: bool = False,
        qkv_bias: bool = True,
        dtype=jnp.float32,
        attention_impl: str | None = None,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        qkv = dict(axes=("embed", "heads"), use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.query = dense(channels, channels, **qkv)
        self.key = dense(source_dim, channels, **qkv)
        self.value = dense(source_dim, channels, **qkv)
        self.out = dense(
            channels,
            channels,
            axes=("heads", "embed"),
            zero_init=zero_init_out,
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(
        self, x: jax.Array, source: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        source = x if source is None else source
        attended = attention(
            self.query(x),
            self.key(source),
            self.value(source),
            self.num_heads,
            mask,
            implementation=self.attention_impl,
        )
        return self.out(attended)


def layer_norm(channels: int, *, dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over channels with named scale/bias."""
    return nnx.LayerNorm(
        channels,
        epsilon=1e-5,
        scale_init=partitioned(ones, ("norm",)),
        bias_init=partitioned(zeros, ("norm",)),
        dtype=dtype,
        rngs=rngs,
    )


class GEGLU(nnx.Module):
    """Gated-GELU feed-forward, width 4x (Shazeer 2020; the FF of Stable Diffusion's blocks)."""

    def __init__(self, channels: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.proj = dense(channels, 8 * channels, dtype=dtype, rngs=rngs)
        self.out = dense(4 * channels, channels, axes=("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(self.proj(x), 2, axis=-1)
        hidden = constrain(value * jax.nn.gelu(gate, approximate=False), ("batch", None, "mlp"))
        return self.out(hidden)


class SpatialTransformer(nnx.Module):
    """Stable-Diffusion text-conditioning block on a feature map (Rombach et al. 2022, sec. 3.3).

    GroupNorm and a linear projection to tokens, then one transformer block (LayerNorm +
    self-attention, LayerNorm + cross-attention to `context` [B, L, context_dim] with
    `context_mask` [B, L] True on real tokens, LayerNorm + GEGLU feed-forward, each residual);
    a zero-initialised projection back plus the outer residual make it the identity at init.
    With `qkv_bias=False` this is diffusers' `Transformer2DModel` (one `BasicTransformerBlock`);
    `linear_projection=False` makes the projections 1x1 convs, the same map stored as SD 1.x
    stores it (diffusers' `use_linear_projection`).
    """

    def __init__(
        self,
        channels: int,
        context_dim: int,
        *,
        num_heads: int,
        num_groups: int,
        qkv_bias: bool = True,
        linear_projection: bool = True,
        dtype=jnp.float32,
        attention_impl: str | None = None,
        conv_impl: str = "xla",
        rngs: nnx.Rngs,
    ):
        common = dict(dtype=dtype, rngs=rngs)
        heads = dict(num_heads=num_heads, qkv_bias=qkv_bias, attention_impl=attention_impl)
        heads.update(common)
        projection = dict(linear=linear_projection, conv_impl=conv_impl, **common)
        self.linear_projection = linear_projection
        self.norm = group_norm(channels, num_groups, **common)
        self.proj_in = _projection(channels, ("embed", "mlp"), **projection)
        self.norm_self = layer_norm(channels, **common)
        self.self_attention = MultiHeadAttention(channels, channels, **heads)
        self.norm_cross = layer_norm(channels, **common)
        self.cross_attention = MultiHeadAttention(channels, context_dim, **heads)
        self.norm_ff = layer_norm(channels, **common)
        self.feed_forward = GEGLU(channels, **common)
        # Created last (parameters draw from the rng stream in creation order).
        self.proj_out = _projection(channels, ("mlp", "embed"), zero_init=True, **projection)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Without `context` the cross-attention sublayer is skipped (an unconditional call)."""
        batch, height, width, channels = x.shape
        tokens = lambda a: a.reshape(batch, height * width, channels)  # noqa: E731
        stream = lambda a: constrain(a, ("batch", "length", "embed"))  # noqa: E731
        if self.linear_projection:
            h = stream(self.proj_in(tokens(self.norm(x))))
        else:
            h = stream(tokens(self.proj_in(self.norm(x))))
        h = stream(h + self.self_attention(self.norm_self(h)))
        if context is not None:
            mask = None if context_mask is None else context_mask[:, None, None, :].astype(bool)
            h = stream(h + self.cross_attention(self.norm_cross(h), context.astype(h.dtype), mask))
        h = stream(h + self.feed_forward(self.norm_ff(h)))
        if self.linear_projection:
            return x + self.proj_out(h).reshape(x.shape)
        return x + self.proj_out(h.reshape(x.shape))


def _projection(
    channels: int,
    axes: tuple[str, str],
    *,
    linear: bool,
    zero_init: bool = False,
    conv_impl: str,
    dtype,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """A channels -> channels map: a Linear layer (on tokens) or a 1x1 conv (on the map)."""
    if linear:
        return dense(channels, channels, axes=axes, zero_init=zero_init, dtype=dtype, rngs=rngs)
    return conv(
        channels, channels, kernel=1, zero_init=zero_init, dtype=dtype, impl=conv_impl, rngs=rngs
    )
