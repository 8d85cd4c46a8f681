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
from models import flash_attention
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
# "cudnn" (fused flash attention) needs a GPU and bf16 / fp16 inputs; "pallas_tpu" is JAX's Pallas
# flash-attention kernel for TPU (models/flash_attention.py), on CPU only in interpret mode.
ATTENTION_IMPLS = (None, "xla", "cudnn", "pallas_tpu")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # model.dtype
DOWNSAMPLE_PADDINGS = (0, 1)  # zeros on each side of a stride-2 conv: see Downsample


def partitioned(init, names: tuple[str | None, ...]):
    """An initializer whose parameter carries logical axis names for the sharding rules."""
    return nnx.with_partitioning(init, names, eager_sharding=False)


def timestep_embedding(
    t: jax.Array,
    dim: int,
    max_period: float = 10_000.0,
    *,
    flip_sin_to_cos: bool = False,
    freq_shift: int = 1,
) -> jax.Array:
    """Sinusoidal embedding [B, dim] of integer or fractional timesteps t [B].

    Transformer position encoding as used by Ho et al. 2020 (their `get_timestep_embedding`):
    frequencies exp(-ln(max_period) * i / (half - freq_shift)), i = 0..half-1, output
    [sin | cos], or [cos | sin] with `flip_sin_to_cos`. The defaults are Ho et al.'s; Stable
    Diffusion's U-Nets use flip_sin_to_cos=True, freq_shift=0 (diffusers' names, from its
    `Timesteps`). Odd `dim` is zero-padded.
    """
    if dim // 2 - freq_shift < 1:
        raise ValueError(
            f"timestep_embedding needs dim >= {2 * freq_shift + 2} (freq_shift={freq_shift}), "
            f"got dim={dim}."
        )
    half = dim // 2
    exponents = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
    freqs = jnp.exp(exponents / (half - freq_shift))
    angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
    sines, cosines = jnp.sin(angles), jnp.cos(angles)
    embedding = jnp.concatenate([cosines, sines] if flip_sin_to_cos else [sines, cosines], -1)
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
    padding: str | tuple[tuple[int, int], tuple[int, int]] = "SAME",
    zero_init: bool = False,
    dtype=jnp.float32,
    impl: str = "xla",
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A square conv with named kernel/bias axes; `impl` is a CONV_IMPLS key, `padding` is
    'SAME' (TensorFlow's) or ((top, bottom), (left, right))."""
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding=padding,
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
    use_bias: bool = True,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A Linear layer with named kernel/bias axes."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        kernel_init=partitioned(zeros if zero_init else default_kernel_init, axes),
        bias_init=partitioned(zeros, (axes[1],)),
        dtype=dtype,
        rngs=rngs,
    )


def group_norm(
    channels: int, num_groups: int, *, eps: float = 1e-6, dtype=jnp.float32, rngs: nnx.Rngs
):
    """GroupNorm; eps 1e-6 is Ho et al.'s (TensorFlow code), Stable Diffusion's resnets use 1e-5."""
    return nnx.GroupNorm(
        channels,
        num_groups=num_groups,
        epsilon=eps,
        scale_init=partitioned(ones, ("norm",)),
        bias_init=partitioned(zeros, ("norm",)),
        dtype=dtype,
        rngs=rngs,
    )


class TimestepMLP(nnx.Module):
    """Sinusoidal features of t followed by Linear-SiLU-Linear (Ho et al. 2020)."""

    def __init__(
        self,
        base_channels: int,
        embed_dim: int,
        *,
        flip_sin_to_cos: bool = False,
        freq_shift: int = 1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.base_channels = base_channels
        self.flip_sin_to_cos, self.freq_shift = flip_sin_to_cos, freq_shift
        self.dense_in = dense(base_channels, embed_dim, dtype=dtype, rngs=rngs)
        self.dense_out = dense(embed_dim, embed_dim, dtype=dtype, rngs=rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        h = timestep_embedding(
            t, self.base_channels, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift
        )
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
        norm_eps: float = 1e-6,
        dtype=jnp.float32,
        conv_impl: str = "xla",
        rngs: nnx.Rngs,
    ):
        convs = dict(dtype=dtype, impl=conv_impl, rngs=rngs)
        norms = dict(eps=norm_eps, dtype=dtype, rngs=rngs)
        self.norm1 = group_norm(in_channels, num_groups, **norms)
        self.conv1 = conv(in_channels, out_channels, **convs)
        self.embed_proj = dense(embed_dim, out_channels, dtype=dtype, rngs=rngs)
        self.norm2 = group_norm(out_channels, num_groups, **norms)
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


class Downsample(nnx.Module):
    """3x3 conv with stride 2 on an even-sized map.

    `padding=0` pads one zero row / column at the bottom / right (TensorFlow 'SAME', as Ho et
    al.), `padding=1` one on every side (diffusers' `downsample_padding=1`, Stable Diffusion):
    output pixel i then sees input rows 2i-1..2i+1 instead of 2i..2i+2.
    """

    def __init__(
        self,
        channels: int,
        *,
        padding: int = 0,
        dtype=jnp.float32,
        conv_impl="xla",
        rngs: nnx.Rngs,
    ):
        if padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"Downsample padding={padding} is not one of {DOWNSAMPLE_PADDINGS}.")
        pads = "SAME" if padding == 0 else ((padding, padding), (padding, padding))
        self.conv = conv(
            channels, channels, stride=2, padding=pads, dtype=dtype, impl=conv_impl, rngs=rngs
        )

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
