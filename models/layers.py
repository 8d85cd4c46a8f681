"""U-Net building blocks: timestep embedding, ResBlock, attention, resampling.

Every parameter carries logical axis names (see `sharding.py`): conv kernels
(None, None, 'conv_in', 'conv_out'), dense kernels ('embed', 'mlp'), attention projections
('embed', 'heads') / ('heads', 'embed'), norms ('norm',). Images are NHWC.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from errors import ConfigError
from models import conv as conv_kernels
from models.logical import constrain

# Ho et al. 2020 initialise with variance scaling over fan_avg (Glorot/Xavier uniform).
default_kernel_init = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()

CONV_AXES = (None, None, "conv_in", "conv_out")
# model.conv_impl: how convolutions run (models/conv.py); 'dots' is the fast path on CPU.
CONV_IMPLS = {"xla": jax.lax.conv_general_dilated, "dots": conv_kernels.conv_general_dilated}
DENSE_AXES = ("embed", "mlp")
# model.attention_impl: `implementation=` of jax.nn.dot_product_attention. None lets JAX choose;
# "cudnn" (fused flash attention) needs a GPU and bf16 / fp16 inputs.
ATTENTION_IMPLS = (None, "xla", "cudnn")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # model.dtype


def partitioned(init, names: tuple[str | None, ...]):
    """An initializer whose parameter carries logical axis names for the sharding rules."""
    return nnx.with_partitioning(init, names, eager_sharding=False)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding [B, dim] of integer or fractional timesteps t [B].

    Transformer position encoding as used by Ho et al. 2020 (their `get_timestep_embedding`):
    frequencies exp(-ln(max_period) * i / (half - 1)), i = 0..half-1, output [sin | cos] (sines
    first; diffusers' `flip_sin_to_cos=True` puts cosines first). Odd `dim` is zero-padded.
    """
    if dim < 4:
        raise ValueError(f"timestep_embedding needs dim >= 4 (two frequencies), got dim={dim}.")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
    embedding = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if dim % 2:
        embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
    return embedding


def check_conditioning(network: str, given: dict[str, object], accepted: dict[str, bool]) -> None:
    """Refuses conditioning a network was not built for: `given` maps the call's conditioning
    arguments to their values, `accepted` maps their config fields to whether they are set."""
    fields = {"class_labels": "num_classes", "context": "context_dim", "pooled": "pooled_dim"}
    for argument, value in given.items():
        field = fields[argument]
        if value is not None and not accepted[field]:
            raise ValueError(f"{argument} was given but the {network} has {field}=None.")


def conv(
    in_channels: int,
    out_channels: int,
    *,
    kernel: int = 3,
    stride: int = 1,
    zero_init: bool = False,
    dtype=jnp.float32,
    impl: str = "xla",
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A square conv with 'SAME' padding and named kernel/bias axes; `impl` is a CONV_IMPLS key."""
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        kernel_init=partitioned(zeros if zero_init else default_kernel_init, CONV_AXES),
        bias_init=partitioned(zeros, ("conv_out",)),
        dtype=dtype,
        conv_general_dilated=CONV_IMPLS[impl],
        rngs=rngs,
    )


def dense(
    in_features: int,
    out_features: int,
    *,
    axes: tuple[str, str] = DENSE_AXES,
    zero_init: bool = False,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A Linear layer with named kernel/bias axes."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=partitioned(zeros if zero_init else default_kernel_init, axes),
        bias_init=partitioned(zeros, (axes[1],)),
        dtype=dtype,
        rngs=rngs,
    )


def group_norm(channels: int, num_groups: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    """GroupNorm with eps 1e-6 (as in Ho et al.'s TensorFlow code)."""
    return nnx.GroupNorm(
        channels,
        num_groups=num_groups,
        epsilon=1e-6,
        scale_init=partitioned(ones, ("norm",)),
        bias_init=partitioned(zeros, ("norm",)),
        dtype=dtype,
        rngs=rngs,
    )


class TimestepMLP(nnx.Module):
    """Sinusoidal features of t followed by Linear-SiLU-Linear (Ho et al. 2020)."""

    def __init__(self, base_channels: int, embed_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.base_channels = base_channels
        self.dense_in = dense(base_channels, embed_dim, dtype=dtype, rngs=rngs)
        self.dense_out = dense(embed_dim, embed_dim, dtype=dtype, rngs=rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        h = timestep_embedding(t, self.base_channels)
        return self.dense_out(nnx.silu(self.dense_in(h)))


class ResBlock(nnx.Module):
    """GroupNorm-SiLU-conv, + projected timestep embedding, GroupNorm-SiLU-dropout-conv, + skip."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embed_dim: int,
        *,
        num_groups: int,
        dropout: float,
        dtype=jnp.float32,
        conv_impl: str = "xla",
        rngs: nnx.Rngs,
    ):
        convs = dict(dtype=dtype, impl=conv_impl, rngs=rngs)
        self.norm1 = group_norm(in_channels, num_groups, dtype=dtype, rngs=rngs)
        self.conv1 = conv(in_channels, out_channels, **convs)
        self.embed_proj = dense(embed_dim, out_channels, dtype=dtype, rngs=rngs)
        self.norm2 = group_norm(out_channels, num_groups, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        # Zero-initialised last conv, so each block starts as the identity: Ho et al.'s code
        # (`init_scale=0.`) and Dhariwal & Nichol 2021 (`zero_module`) both do this.
        self.conv2 = conv(out_channels, out_channels, zero_init=True, **convs)
        self.skip = (
            conv(in_channels, out_channels, kernel=1, **convs)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = h + self.embed_proj(nnx.silu(embedding))[:, None, None, :]
        h = self.conv2(self.dropout(nnx.silu(self.norm2(h))))
        out = (x if self.skip is None else self.skip(x)) + h
        return constrain(out, ("batch", None, None, None))


class AttentionBlock(nnx.Module):
    """Residual multi-head self-attention over the H*W positions (Ho et al. 2020)."""

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int,
        num_groups: int,
        dtype=jnp.float32,
        attention_impl: str | None = None,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        self.norm = group_norm(channels, num_groups, dtype=dtype, rngs=rngs)
        qkv = dict(axes=("embed", "heads"), dtype=dtype, rngs=rngs)
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


class MultiHeadAttention(nnx.Module):
    """Projections around `attention`: queries from x, keys/values from `source` (x if None)."""

    def __init__(
        self,
        channels: int,
        source_dim: int,
        *,
        num_heads: int,
        zero_init_out: bool = False,
        dtype=jnp.float32,
        attention_impl: str | None = None,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        self.query = dense(channels, channels, axes=("embed", "heads"), dtype=dtype, rngs=rngs)
        self.key = dense(source_dim, channels, axes=("embed", "heads"), dtype=dtype, rngs=rngs)
        self.value = dense(source_dim, channels, axes=("embed", "heads"), dtype=dtype, rngs=rngs)
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
    """

    def __init__(
        self,
        channels: int,
        context_dim: int,
        *,
        num_heads: int,
        num_groups: int,
        dtype=jnp.float32,
        attention_impl: str | None = None,
        rngs: nnx.Rngs,
    ):
        common = dict(dtype=dtype, rngs=rngs)
        heads = dict(num_heads=num_heads, attention_impl=attention_impl, **common)
        self.norm = group_norm(channels, num_groups, **common)
        self.proj_in = dense(channels, channels, axes=("embed", "mlp"), **common)
        self.norm_self = layer_norm(channels, **common)
        self.self_attention = MultiHeadAttention(channels, channels, **heads)
        self.norm_cross = layer_norm(channels, **common)
        self.cross_attention = MultiHeadAttention(channels, context_dim, **heads)
        self.norm_ff = layer_norm(channels, **common)
        self.feed_forward = GEGLU(channels, **common)
        self.proj_out = dense(channels, channels, axes=("mlp", "embed"), zero_init=True, **common)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Without `context` the cross-attention sublayer is skipped (an unconditional call)."""
        batch, height, width, channels = x.shape
        stream = lambda a: constrain(a, ("batch", "length", "embed"))  # noqa: E731
        h = stream(self.proj_in(self.norm(x).reshape(batch, height * width, channels)))
        h = stream(h + self.self_attention(self.norm_self(h)))
        if context is not None:
            mask = None if context_mask is None else context_mask[:, None, None, :].astype(bool)
            h = stream(h + self.cross_attention(self.norm_cross(h), context.astype(h.dtype), mask))
        h = stream(h + self.feed_forward(self.norm_ff(h)))
        return x + self.proj_out(h).reshape(x.shape)


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

    `implementation` is an ATTENTION_IMPLS entry (jax.nn.dot_product_attention's argument).
    """
    batch, length, channels = query.shape
    head_dim = channels // num_heads
    per_head = ("batch", None, "heads", None)  # each tensor-parallel device keeps its heads

    def split(a: jax.Array) -> jax.Array:
        return constrain(a.reshape(a.shape[0], a.shape[1], num_heads, head_dim), per_head)

    out = jax.nn.dot_product_attention(
        split(query), split(key), split(value), mask=mask, implementation=implementation
    )
    return constrain(out, per_head).reshape(batch, length, channels)


class Downsample(nnx.Module):
    """3x3 conv with stride 2 (TensorFlow 'SAME' padding, as Ho et al.)."""

    def __init__(self, channels: int, *, dtype=jnp.float32, conv_impl="xla", rngs: nnx.Rngs):
        self.conv = conv(channels, channels, stride=2, dtype=dtype, impl=conv_impl, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int, *, dtype=jnp.float32, conv_impl="xla", rngs: nnx.Rngs):
        self.conv = conv(channels, channels, dtype=dtype, impl=conv_impl, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


def validate_shared_fields(config) -> None:
    """The fields every backbone config shares: conditioning widths, dropout, dtype, attention.

    Raises ConfigError naming `model.<field>`.
    """
    for name in ("num_classes", "context_dim", "pooled_dim"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(
                f"model.{name}={value} must be a positive int or None (unconditional)."
            )
    if not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"model.dropout={config.dropout} must be in [0, 1).")
    if config.dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"model.dtype={config.dtype!r} is not one of {sorted(COMPUTE_DTYPES)}.")
    if config.attention_impl not in ATTENTION_IMPLS:
        raise ConfigError(
            f"model.attention_impl={config.attention_impl!r} is not known; allowed: "
            f"{', '.join(map(repr, ATTENTION_IMPLS))}."
        )
