"""U-Net building blocks: timestep embedding, conv / dense / norm layers, ResBlock, resampling
(the attention blocks are in models/attention_blocks.py).

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
from models.attention import ATTENTION_IMPLS
from models.logical import constrain

# Ho et al. 2020 initialise with variance scaling over fan_avg (Glorot/Xavier uniform).
default_kernel_init = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()

CONV_AXES = (None, None, "conv_in", "conv_out")
# model.conv_impl: how convolutions run (models/conv.py); 'dots' is the fast path on CPU.
CONV_IMPLS = {"xla": jax.lax.conv_general_dilated, "dots": conv_kernels.conv_general_dilated}
DENSE_AXES = ("embed", "mlp")
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
