"""The DDPM / ADM-style U-Net (Ho et al. 2020, appendix B; Dhariwal & Nichol 2021)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from errors import ConfigError
from models import layers
from schema import field

DTYPES = layers.COMPUTE_DTYPES


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Typed view of `config.model` plus the data shape and optional conditioning."""

    image_size: int = 32  # set from data.image_size
    in_channels: int = 3  # set from data.channels
    out_channels: int = 3
    base_channels: int = field(128, "Channels at the highest resolution.")
    channel_mult: tuple[int, ...] = field(
        (1, 2, 2, 2), "Per-level channel multipliers; each level after the first halves."
    )
    num_res_blocks: int = field(2, "ResBlocks per level on the way down.")
    attention_resolutions: tuple[int, ...] = field((4,), "Feature-map sizes with self-attention.")
    num_heads: int = field(1, "Heads of each attention layer.")
    dropout: float = field(0.1, "Dropout inside ResBlocks (training only).")
    num_groups: int = field(32, "GroupNorm groups.")
    num_classes: int | None = None  # class-conditional when set; index num_classes = "no class"
    context_dim: int | None = None  # cross-attention to text tokens when set
    pooled_dim: int | None = None  # a pooled text embedding added to the timestep embedding
    dtype: str = field(
        "float32",
        "'bfloat16': the network computes in bf16; parameters, optimizer state, EMA, the noise "
        "schedule, the loss and the samplers stay float32.",
    )
    remat: bool = field(False, "Recompute each block's activations in the backward pass.")
    attention_impl: str | None = field(
        None,
        "Attention kernel: None lets JAX choose, 'xla', or 'cudnn' (fused flash attention: GPU "
        "only, model.dtype 'bfloat16').",
    )
    conv_impl: str = field(
        "xla",
        "'xla': lax convolutions. 'dots': 1x1 convs and the 3x3 kernel gradients at >= 32x32 as "
        "matmuls (models/conv.py), faster on CPU; keep 'xla' on GPU / TPU.",
    )

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each level."""
        return tuple(self.image_size // 2**level for level in range(len(self.channel_mult)))

    def validate(self) -> None:
        """Raises ConfigError naming the bad field before anything is built or compiled."""
        levels = len(self.channel_mult)
        if levels < 1 or any(m < 1 for m in self.channel_mult):
            raise ConfigError(
                f"model.channel_mult={self.channel_mult} needs >= 1 positive entries."
            )
        halvings = levels - 1
        if self.image_size < 1 or self.image_size % 2**halvings:
            raise ConfigError(
                f"data.image_size={self.image_size} cannot be halved {halvings} times "
                f"(model.channel_mult={self.channel_mult} has {levels} levels); use a multiple "
                f"of {2**halvings} or fewer levels."
            )
        if self.base_channels < 4:
            raise ConfigError(
                f"model.base_channels={self.base_channels} must be >= 4 (the timestep embedding "
                "needs two sine/cosine frequencies)."
            )
        if self.num_res_blocks < 1:
            raise ConfigError(f"model.num_res_blocks={self.num_res_blocks} must be >= 1.")
        for name in ("num_groups", "num_heads"):  # divisors below
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1.")
        for mult in self.channel_mult:
            channels = self.base_channels * mult
            if channels % self.num_groups:
                raise ConfigError(
                    f"model.num_groups={self.num_groups} must divide every level's channels; "
                    f"model.base_channels * mult = {channels} is not divisible."
                )
            if channels % self.num_heads:
                raise ConfigError(
                    f"model.num_heads={self.num_heads} must divide every level's channels "
                    f"({channels})."
                )
        missing = [r for r in self.attention_resolutions if r not in self.resolutions]
        if missing:
            raise ConfigError(
                f"model.attention_resolutions={self.attention_resolutions}: {missing} never "
                f"occur; the feature-map sizes are {self.resolutions} "
                f"(data.image_size={self.image_size}, halved per model.channel_mult level)."
            )
        layers.validate_shared_fields(self)
        if self.conv_impl not in layers.CONV_IMPLS:
            raise ConfigError(
                f"model.conv_impl={self.conv_impl!r} is not one of {sorted(layers.CONV_IMPLS)}."
            )


class UNet(nnx.Module):
    """Noise-prediction U-Net: x [B, H, W, C], t [B] -> [B, H, W, out_channels]."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        dtype = DTYPES[config.dtype]
        base, embed_dim = config.base_channels, 4 * config.base_channels
        convs = dict(dtype=dtype, conv_impl=config.conv_impl, rngs=rngs)
        block = dict(num_groups=config.num_groups, dropout=config.dropout, **convs)
        attn = dict(
            num_heads=config.num_heads,
            num_groups=config.num_groups,
            dtype=dtype,
            attention_impl=config.attention_impl,
            rngs=rngs,
        )

        def attention_block(channels: int) -> nnx.Module:
            # Text-conditioned U-Nets use Stable Diffusion's transformer blocks; others DDPM's.
            if config.context_dim is None:
                return layers.AttentionBlock(channels, **attn)
            return layers.SpatialTransformer(channels, config.context_dim, **attn)

        self.time_embed = layers.TimestepMLP(base, embed_dim, dtype=dtype, rngs=rngs)
        self.class_embed = (
            nnx.Embed(
                config.num_classes + 1,
                embed_dim,
                embedding_init=layers.partitioned(
                    nnx.initializers.normal(1.0), ("classes", "embed")
                ),
                rngs=rngs,
            )
            if config.num_classes is not None
            else None
        )
        self.pooled_proj = (
            layers.dense(config.pooled_dim, embed_dim, dtype=dtype, rngs=rngs)
            if config.pooled_dim is not None
            else None
        )
        self.conv_in = layers.conv(
            config.in_channels, base, dtype=dtype, impl=config.conv_impl, rngs=rngs
        )

        # Down path: remember the channels of every feature map that becomes a skip connection.
        skip_channels = [base]
        channels = base
        self.down_blocks = nnx.List()
        self.down_attn = nnx.List()
        self.downsamplers = nnx.List()
        for level, mult in enumerate(config.channel_mult):
            use_attn = config.resolutions[level] in config.attention_resolutions
            for _ in range(config.num_res_blocks):
                self.down_blocks.append(layers.ResBlock(channels, base * mult, embed_dim, **block))
                channels = base * mult
                self.down_attn.append(attention_block(channels) if use_attn else None)
                skip_channels.append(channels)
            if level < len(config.channel_mult) - 1:
                self.downsamplers.append(layers.Downsample(channels, **convs))
                skip_channels.append(channels)

        self.mid_block1 = layers.ResBlock(channels, channels, embed_dim, **block)
        self.mid_attn = attention_block(channels)
        self.mid_block2 = layers.ResBlock(channels, channels, embed_dim, **block)

        # Up path: num_res_blocks + 1 blocks per level, each eating one skip connection.
        self.up_blocks = nnx.List()
        self.up_attn = nnx.List()
        self.upsamplers = nnx.List()
        for level in reversed(range(len(config.channel_mult))):
            out = base * config.channel_mult[level]
            use_attn = config.resolutions[level] in config.attention_resolutions
            for _ in range(config.num_res_blocks + 1):
                skip = skip_channels.pop()
                self.up_blocks.append(layers.ResBlock(channels + skip, out, embed_dim, **block))
                channels = out
                self.up_attn.append(attention_block(channels) if use_attn else None)
            if level > 0:
                self.upsamplers.append(layers.Upsample(channels, **convs))

        self.norm_out = layers.group_norm(channels, config.num_groups, dtype=dtype, rngs=rngs)
        self.conv_out = layers.conv(
            channels,
            config.out_channels,
            zero_init=True,
            dtype=dtype,
            impl=config.conv_impl,
            rngs=rngs,
        )

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        *,
        class_labels: jax.Array | None = None,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        pooled: jax.Array | None = None,
    ) -> jax.Array:
        """Predicts from noisy images; conditioning is optional and must match the config.

        Args:
          x: noisy images [B, H, W, in_channels].
          t: timesteps [B], int or float (only the sinusoidal embedding sees them).
          class_labels: int [B] in [0, num_classes]; None or num_classes means "no class".
          context: tokens [B, L, context_dim] for cross-attention; None skips cross-attention.
          context_mask: bool [B, L], True for real tokens; None attends to all L tokens.
          pooled: [B, pooled_dim] pooled text embedding, added to the timestep embedding.

        Returns:
          [B, H, W, out_channels] in float32.
        """
        config = self.config
        layers.check_conditioning(
            "U-Net",
            {"class_labels": class_labels, "context": context, "pooled": pooled},
            {
                "num_classes": config.num_classes is not None,
                "context_dim": config.context_dim is not None,
                "pooled_dim": config.pooled_dim is not None,
            },
        )
        embedding = self.time_embed(t)  # [B, 4 * base]
        if self.class_embed is not None:
            if class_labels is None:  # unconditional: the reserved "no class" row
                class_labels = jnp.full(t.shape, config.num_classes, jnp.int32)
            embedding = embedding + self.class_embed(class_labels)
        if pooled is not None:
            embedding = embedding + self.pooled_proj(pooled.astype(embedding.dtype))
        cond = (context, context_mask)
        run = nnx.remat(_call_block) if config.remat else _call_block

        h = self.conv_in(x.astype(DTYPES[config.dtype]))
        skips = [h]
        block_index = 0
        for level in range(len(config.channel_mult)):
            for _ in range(config.num_res_blocks):
                h = run(self.down_blocks[block_index], h, embedding)
                if self.down_attn[block_index] is not None:
                    h = run(self.down_attn[block_index], h, *cond)
                skips.append(h)
                block_index += 1
            if level < len(config.channel_mult) - 1:
                h = self.downsamplers[level](h)
                skips.append(h)

        h = run(self.mid_block1, h, embedding)
        h = run(self.mid_attn, h, *cond)
        h = run(self.mid_block2, h, embedding)

        block_index = 0
        for up_level, level in enumerate(reversed(range(len(config.channel_mult)))):
            for _ in range(config.num_res_blocks + 1):
                h = run(
                    self.up_blocks[block_index],
                    jnp.concatenate([h, skips.pop()], axis=-1),
                    embedding,
                )
                if self.up_attn[block_index] is not None:
                    h = run(self.up_attn[block_index], h, *cond)
                block_index += 1
            if level > 0:
                h = self.upsamplers[up_level](h)

        h = self.conv_out(nnx.silu(self.norm_out(h)))
        return h.astype(jnp.float32)


def _call_block(block: nnx.Module, *args: jax.Array | None) -> jax.Array:
    """block(*args): a ResBlock (h, embedding) or attention block (h, context, context_mask)."""
    return block(*args)
