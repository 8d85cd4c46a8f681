"""The DDPM / ADM-style U-Net (Ho et al. 2020, appendix B; Dhariwal & Nichol 2021), which with
text cross-attention and the options of `UNetConfig` (`models/unet_config.py`) is also Stable
Diffusion's U-Net (Rombach et al. 2022; diffusers' `UNet2DConditionModel`, whose weights
`models/unet_weights.py` reads and writes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models import attention_blocks, layers
from models.unet_config import DTYPES, UNetConfig


class UNet(nnx.Module):
    """Noise-prediction U-Net: x [B, H, W, C], t [B] -> [B, H, W, out_channels]."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        dtype = DTYPES[config.dtype]
        base, embed_dim = config.base_channels, 4 * config.base_channels
        convs = dict(dtype=dtype, conv_impl=config.conv_impl, rngs=rngs)
        block = dict(
            num_groups=config.num_groups,
            dropout=config.dropout,
            norm_eps=config.norm_eps,
            **convs,
        )
        attn = dict(
            num_groups=config.num_groups,
            qkv_bias=config.qkv_bias,
            dtype=dtype,
            attention_impl=config.attention_impl,
            rngs=rngs,
        )

        def attention_block(channels: int, level: int) -> nnx.Module:
            # Text-conditioned U-Nets use Stable Diffusion's transformer blocks; others DDPM's.
            heads = config.heads(level)
            if config.context_dim is None:
                return attention_blocks.AttentionBlock(
                    channels, num_heads=heads, norm_eps=config.norm_eps, **attn
                )
            return attention_blocks.SpatialTransformer(
                channels,
                config.context_dim,
                num_heads=heads,
                linear_projection=config.use_linear_projection,
                conv_impl=config.conv_impl,
                **attn,
            )

        self.time_embed = layers.TimestepMLP(
            base,
            embed_dim,
            flip_sin_to_cos=config.flip_sin_to_cos,
            freq_shift=config.freq_shift,
            dtype=dtype,
            rngs=rngs,
        )
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
                self.down_attn.append(attention_block(channels, level) if use_attn else None)
                skip_channels.append(channels)
            if level < len(config.channel_mult) - 1:
                self.downsamplers.append(
                    layers.Downsample(channels, padding=config.downsample_padding, **convs)
                )
                skip_channels.append(channels)

        self.mid_block1 = layers.ResBlock(channels, channels, embed_dim, **block)
        self.mid_attn = attention_block(channels, len(config.channel_mult) - 1)
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
                self.up_attn.append(attention_block(channels, level) if use_attn else None)
            if level > 0:
                self.upsamplers.append(layers.Upsample(channels, **convs))

        self.norm_out = layers.group_norm(
            channels, config.num_groups, eps=config.norm_eps, dtype=dtype, rngs=rngs
        )
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
