"""Encoder and decoder of the KL autoencoder (Rombach et al. 2022), as diffusers' `Encoder` and
`Decoder` with DownEncoderBlock2D / UpDecoderBlock2D levels and a UNetMidBlock2D.

Attribute names mirror diffusers' module names, lists included (`down_blocks/0/resnets/1`,
`mid_block/attentions/0/to_out/0`), so a parameter path joined with '.' is the diffusers tensor
name up to the leaf (kernel / scale -> weight); `models/autoencoder_weights.py` relies on this.
Every GroupNorm has eps 1e-6, as diffusers builds the VAE (`resnet_eps=1e-6`). Images are NHWC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from models import attention, layers
from models.logical import constrain

if TYPE_CHECKING:
    from models.autoencoder import AutoencoderConfig

# diffusers' Downsample2D(padding=0) pads right and bottom by one before a 3x3 stride-2 conv.
DOWNSAMPLE_PADDING = ((0, 1), (0, 1))


def conv(
    in_channels: int,
    out_channels: int,
    *,
    kernel: int = 3,
    stride: int = 1,
    padding="SAME",
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A conv with named kernel/bias axes; 'SAME' is torch's padding=1 (3x3) / 0 (1x1)."""
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding=padding,
        kernel_init=layers.partitioned(layers.default_kernel_init, layers.CONV_AXES),
        bias_init=layers.partitioned(layers.zeros, ("conv_out",)),
        rngs=rngs,
    )


def group_norm(channels: int, num_groups: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm with eps 1e-6 and torch's two-pass variance: SD decoders' activations get large
    (SDXL's overflow float16), where E[x^2] - E[x]^2 loses float32 digits."""
    return nnx.GroupNorm(
        channels,
        num_groups=num_groups,
        epsilon=1e-6,
        use_fast_variance=False,
        scale_init=layers.partitioned(layers.ones, ("norm",)),
        bias_init=layers.partitioned(layers.zeros, ("norm",)),
        rngs=rngs,
    )


class ResnetBlock(nnx.Module):
    """diffusers' ResnetBlock2D without a time embedding: GN-SiLU-conv, GN-SiLU-conv, + skip
    (a 1x1 `conv_shortcut` where the channels change)."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, *, rngs: nnx.Rngs):
        self.norm1 = group_norm(in_channels, num_groups, rngs=rngs)
        self.conv1 = conv(in_channels, out_channels, rngs=rngs)
        self.norm2 = group_norm(out_channels, num_groups, rngs=rngs)
        self.conv2 = conv(out_channels, out_channels, rngs=rngs)
        self.conv_shortcut = (
            conv(in_channels, out_channels, kernel=1, rngs=rngs)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return constrain(skip + h, ("batch", None, None, None))


class Attention(nnx.Module):
    """Single-head self-attention over the H*W positions with a GroupNorm in front and a
    residual, as diffusers' mid-block `Attention` (heads = channels // attention_head_dim = 1)."""

    def __init__(self, channels: int, num_groups: int, *, rngs: nnx.Rngs):
        self.group_norm = group_norm(channels, num_groups, rngs=rngs)
        qkv = dict(axes=("embed", "heads"), rngs=rngs)
        self.to_q = layers.dense(channels, channels, **qkv)
        self.to_k = layers.dense(channels, channels, **qkv)
        self.to_v = layers.dense(channels, channels, **qkv)
        # A one-entry list, as diffusers' `to_out = [Linear, Dropout]` names it `to_out.0`.
        self.to_out = nnx.List(
            [layers.dense(channels, channels, axes=("heads", "embed"), rngs=rngs)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        h = self.group_norm(x).reshape(batch, height * width, channels)
        # One head of width C: scale 1/sqrt(C); float32 throughout (diffusers' upcast_softmax).
        attended = attention.attention(self.to_q(h), self.to_k(h), self.to_v(h), num_heads=1)
        return x + self.to_out[0](attended).reshape(x.shape)


class MidBlock(nnx.Module):
    """UNetMidBlock2D: resnet, attention (optional), resnet at constant width."""

    def __init__(self, channels: int, num_groups: int, add_attention: bool, *, rngs: nnx.Rngs):
        self.resnets = nnx.List(
            [ResnetBlock(channels, channels, num_groups, rngs=rngs) for _ in range(2)]
        )
        self.attentions = nnx.List(
            [Attention(channels, num_groups, rngs=rngs) if add_attention else None]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x)
        if self.attentions[0] is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nnx.Module):
    """Downsample2D(padding=0): zero-pad right/bottom by one, 3x3 conv with stride 2, no padding."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, stride=2, padding=DOWNSAMPLE_PADDING, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample(nnx.Module):
    """Upsample2D: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


def _resnets(in_channels: int, out_channels: int, num_layers: int, num_groups: int, rngs):
    """The resnets of one level: the first maps in_channels to out_channels."""
    return nnx.List(
        [
            ResnetBlock(
                in_channels if i == 0 else out_channels, out_channels, num_groups, rngs=rngs
            )
            for i in range(num_layers)
        ]
    )


class DownEncoderBlock(nnx.Module):
    """DownEncoderBlock2D: `num_layers` resnets, then a Downsample unless it is the last level."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        num_groups: int,
        downsample: bool,
        *,
        rngs: nnx.Rngs,
    ):
        self.resnets = _resnets(in_channels, out_channels, num_layers, num_groups, rngs)
        self.downsamplers = nnx.List([Downsample(out_channels, rngs=rngs)] if downsample else [])

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        for downsampler in self.downsamplers:
            x = downsampler(x)
        return x


class UpDecoderBlock(nnx.Module):
    """UpDecoderBlock2D: `num_layers` resnets, then an Upsample unless it is the last level."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        num_groups: int,
        upsample: bool,
        *,
        rngs: nnx.Rngs,
    ):
        self.resnets = _resnets(in_channels, out_channels, num_layers, num_groups, rngs)
        self.upsamplers = nnx.List([Upsample(out_channels, rngs=rngs)] if upsample else [])

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        for upsampler in self.upsamplers:
            x = upsampler(x)
        return x


class Encoder(nnx.Module):
    """images [B, H, W, in_channels] -> [B, H/f, W/f, 2 * latent_channels] (mean | logvar),
    f = 2 ** (levels - 1), before the quant conv."""

    def __init__(self, config: AutoencoderConfig, *, rngs: nnx.Rngs):
        widths, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = conv(config.in_channels, widths[0], rngs=rngs)
        self.down_blocks = nnx.List(
            [
                DownEncoderBlock(
                    widths[max(i - 1, 0)],
                    widths[i],
                    config.layers_per_block,
                    groups,
                    downsample=i < len(widths) - 1,
                    rngs=rngs,
                )
                for i in range(len(widths))
            ]
        )
        self.mid_block = MidBlock(widths[-1], groups, config.mid_block_add_attention, rngs=rngs)
        self.conv_norm_out = group_norm(widths[-1], groups, rngs=rngs)
        self.conv_out = conv(widths[-1], 2 * config.latent_channels, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        h = self.conv_in(images)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(nnx.silu(self.conv_norm_out(h)))


class Decoder(nnx.Module):
    """latents [B, h, w, latent_channels] -> images [B, h*f, w*f, out_channels], after the
    post-quant conv; each level has layers_per_block + 1 resnets (diffusers' Decoder)."""

    def __init__(self, config: AutoencoderConfig, *, rngs: nnx.Rngs):
        widths, groups = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = conv(config.latent_channels, widths[0], rngs=rngs)
        self.mid_block = MidBlock(widths[0], groups, config.mid_block_add_attention, rngs=rngs)
        self.up_blocks = nnx.List(
            [
                UpDecoderBlock(
                    widths[max(i - 1, 0)],
                    widths[i],
                    config.layers_per_block + 1,
                    groups,
                    upsample=i < len(widths) - 1,
                    rngs=rngs,
                )
                for i in range(len(widths))
            ]
        )
        self.conv_norm_out = group_norm(widths[-1], groups, rngs=rngs)
        self.conv_out = conv(widths[-1], config.out_channels, rngs=rngs)

    def __call__(self, latents: jax.Array) -> jax.Array:
        h = self.mid_block(self.conv_in(latents))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(nnx.silu(self.conv_norm_out(h)))
