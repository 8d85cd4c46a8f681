"""DiT: the Diffusion Transformer of Peebles & Xie 2023 ("Scalable Diffusion Models with
Transformers"), with adaLN-Zero blocks and optional PixArt-alpha style cross-attention to text.

Images [B, H, W, C] are cut into p x p patches, embedded as T = (H/p)(W/p) tokens of width D plus
a position embedding, run through N transformer blocks modulated by a conditioning vector c
(timestep embedding + class embedding and/or projected pooled text embedding), and projected back
to p x p x out_channels per token. Every block and the final projection start at zero, so a fresh
network outputs 0. Parameters carry logical axis names (see `sharding.py`); with `use_scan` the
blocks are stacked along a leading 'layers' axis and run by one `nnx.scan`. The typed config,
`DiTConfig`, is in `models/dit_config.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import attention, attention_blocks, layers
from models.dit_config import DTYPES, DiTConfig
from models.logical import constrain

FREQUENCY_DIM = 256  # sinusoidal timestep features fed to the timestep MLP (the paper's 256)

xavier = nnx.initializers.xavier_uniform()
small_normal = nnx.initializers.normal(0.02)


def sincos_pos_embed(grid: int, dim: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding [grid * grid, dim] (MAE; used by DiT).

    Token i = row * grid + col. The first half of the channels encodes the column, the second
    half the row, each as [sin | cos] of the coordinate at frequencies 10000^(-k / (dim / 4)).
    """
    quarter = dim // 4
    omega = 1.0 / 10_000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def encode(coordinate: np.ndarray) -> np.ndarray:
        angles = coordinate.reshape(-1, 1) * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)


def patchify(x: jax.Array, patch: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)(W/p), p * p * C], patches in row-major order."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // patch, patch, width // patch, patch, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, h, w, p, p, C]
    return x.reshape(batch, (height // patch) * (width // patch), patch * patch * channels)


def unpatchify(tokens: jax.Array, patch: int, grid: int) -> jax.Array:
    """[B, grid * grid, p * p * C] -> [B, grid * p, grid * p, C] (the inverse of `patchify`)."""
    batch, _, features = tokens.shape
    channels = features // (patch * patch)
    x = tokens.reshape(batch, grid, grid, patch, patch, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, h, p, w, p, C]
    return x.reshape(batch, grid * patch, grid * patch, channels)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: x [B, T, D] * (1 + scale) + shift, with shift and scale [B, 1, D]."""
    return x * (1 + scale) + shift


def _dense(in_features, out_features, *, axes, init=xavier, dtype, rngs) -> nnx.Linear:
    """A Linear with named axes, the given kernel init and a zero bias (the paper's init)."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=layers.partitioned(init, axes),
        bias_init=layers.partitioned(layers.zeros, (axes[1],)),
        dtype=dtype,
        rngs=rngs,
    )


def _layer_norm(dim: int, *, affine: bool, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with eps 1e-6; without affine parameters where adaLN supplies them."""
    return nnx.LayerNorm(
        dim,
        epsilon=1e-6,
        use_scale=affine,
        use_bias=affine,
        scale_init=layers.partitioned(layers.ones, ("norm",)),
        bias_init=layers.partitioned(layers.zeros, ("norm",)),
        dtype=dtype,
        rngs=rngs,
    )


class SelfAttention(nnx.Module):
    """Multi-head self-attention with one fused qkv projection (as the paper's timm blocks)."""

    def __init__(self, hidden: int, num_heads: int, *, dtype, attention_impl=None, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.attention_impl = attention_impl  # attention.ATTENTION_IMPLS
        self.qkv = _dense(hidden, 3 * hidden, axes=("embed", "heads"), dtype=dtype, rngs=rngs)
        self.out = _dense(hidden, hidden, axes=("heads", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        query, key, value = jnp.split(self.qkv(x), 3, axis=-1)  # 3 x [B, T, D]
        attended = attention.attention(
            query, key, value, self.num_heads, implementation=self.attention_impl
        )
        return self.out(attended)


class DiTBlock(nnx.Module):
    """adaLN-Zero transformer block; with `context_dim`, also cross-attention to text tokens.

    SiLU(c) -> Linear(D, 6D) gives shift/scale/gate for the attention and the MLP sublayers; the
    Linear starts at zero, so the gates are 0 and the block is the identity at initialisation.
    The cross-attention sublayer (LayerNorm, queries from the image tokens, keys/values from the
    context) sits between them, ungated, with a zero-initialised output projection (PixArt-alpha).
    """

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        _, hidden, heads = config.dims
        mlp_width = int(hidden * config.mlp_ratio)
        common = dict(dtype=DTYPES[config.dtype], rngs=rngs)
        self.norm_attention = _layer_norm(hidden, affine=False, **common)
        impl = config.attention_impl
        self.attention = SelfAttention(hidden, heads, attention_impl=impl, **common)
        if config.context_dim is not None:
            self.norm_cross = _layer_norm(hidden, affine=True, **common)
            self.cross_attention = attention_blocks.MultiHeadAttention(
                hidden,
                config.context_dim,
                num_heads=heads,
                zero_init_out=True,
                attention_impl=impl,
                **common,
            )
        else:
            self.norm_cross = self.cross_attention = None
        self.norm_mlp = _layer_norm(hidden, affine=False, **common)
        self.mlp_in = _dense(hidden, mlp_width, axes=("embed", "mlp"), **common)
        self.mlp_out = _dense(mlp_width, hidden, axes=("mlp", "embed"), **common)
        self.modulation = _dense(
            hidden, 6 * hidden, axes=("embed", "mlp"), init=layers.zeros, **common
        )
        self.dropout = nnx.Dropout(config.dropout)  # keys come from the caller (see DiT)

    def __call__(
        self,
        x: jax.Array,
        c: jax.Array,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """x [B, T, D], conditioning c [B, D], context [B, L, context_dim], mask [B, L]."""
        keys = (None, None) if dropout_key is None else jax.random.split(dropout_key)
        modulation = self.modulation(nnx.silu(c))[:, None, :]  # [B, 1, 6D]
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(modulation, 6, axis=-1)
        stream = lambda a: constrain(a, ("batch", "length", "embed"))  # noqa: E731
        h = self.attention(modulate(self.norm_attention(x), shift_a, scale_a))
        x = stream(x + gate_a * self.dropout(h, rngs=keys[0]))
        if self.cross_attention is not None and context is not None:
            mask = None if context_mask is None else context_mask.astype(bool)
            h = self.cross_attention(
                self.norm_cross(x),
                context.astype(x.dtype),
                None if mask is None else mask[:, None, None, :],
            )
            if mask is not None:  # a caption without real tokens contributes nothing
                h = jnp.where(mask.any(axis=-1)[:, None, None], h, 0)
            x = stream(x + h)
        h = modulate(self.norm_mlp(x), shift_m, scale_m)
        h = constrain(jax.nn.gelu(self.mlp_in(h), approximate=True), ("batch", None, "mlp"))
        return stream(x + gate_m * self.dropout(self.mlp_out(h), rngs=keys[1]))


class FinalLayer(nnx.Module):
    """adaLN (shift, scale) + LayerNorm, then a zero-initialised Linear to p * p * C per token."""

    def __init__(self, hidden: int, out_features: int, *, dtype, rngs: nnx.Rngs):
        common = dict(init=layers.zeros, dtype=dtype, rngs=rngs)
        self.norm = _layer_norm(hidden, affine=False, dtype=dtype, rngs=rngs)
        self.modulation = _dense(hidden, 2 * hidden, axes=("embed", "mlp"), **common)
        self.linear = _dense(hidden, out_features, axes=("embed", "conv_out"), **common)

    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        shift, scale = jnp.split(self.modulation(nnx.silu(c))[:, None, :], 2, axis=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nnx.Module):
    """Diffusion Transformer: x [B, H, W, C], t [B] -> [B, H, W, output_channels]."""

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        depth, hidden, _ = config.dims
        patch = config.patch_size
        common = dict(dtype=DTYPES[config.dtype], rngs=rngs)
        # Patch embedding: the paper's stride-p conv, as a Linear on flattened patches.
        self.patch_embed = _dense(
            patch * patch * config.in_channels, hidden, axes=("conv_in", "embed"), **common
        )
        self.pos_embed = (
            nnx.Param(
                layers.partitioned(small_normal, (None, "embed"))(
                    rngs.params(), (config.grid**2, hidden), jnp.float32
                )
            )
            if config.pos_embed == "learned"
            else None
        )
        self.time_in = _dense(
            FREQUENCY_DIM, hidden, axes=("embed", "mlp"), init=small_normal, **common
        )
        self.time_out = _dense(hidden, hidden, axes=("mlp", "embed"), init=small_normal, **common)
        self.class_embed = (
            nnx.Embed(
                config.num_classes + 1,
                hidden,
                embedding_init=layers.partitioned(small_normal, ("classes", "embed")),
                **common,
            )
            if config.num_classes is not None
            else None
        )
        if config.pooled_dim is not None:
            self.pooled_in = _dense(config.pooled_dim, hidden, axes=("embed", "mlp"), **common)
            self.pooled_out = _dense(hidden, hidden, axes=("mlp", "embed"), **common)
        else:
            self.pooled_in = self.pooled_out = None
        if config.use_scan:
            # One block's parameters with a leading depth axis, named 'layers' for sharding.
            @nnx.split_rngs(splits=depth)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_blocks(rngs: nnx.Rngs) -> DiTBlock:
                return DiTBlock(config, rngs=rngs)

            self.blocks = make_blocks(rngs)
        else:
            self.blocks = nnx.List([DiTBlock(config, rngs=rngs) for _ in range(depth)])
        # One dropout stream at the top, split per block: stacked streams would not reseed.
        self.dropout_rngs = rngs["dropout"].fork() if config.dropout > 0 else None
        self.final = FinalLayer(hidden, patch * patch * config.output_channels, **common)

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
          pooled: [B, pooled_dim] pooled text embedding, added to the conditioning vector.

        Returns:
          [B, H, W, output_channels] in float32.
        """
        config = self.config
        layers.check_conditioning(
            "DiT",
            {"class_labels": class_labels, "context": context, "pooled": pooled},
            {
                "num_classes": config.num_classes is not None,
                "context_dim": config.context_dim is not None,
                "pooled_dim": config.pooled_dim is not None,
            },
        )
        dtype = DTYPES[config.dtype]
        with jax.named_scope("dit"):
            tokens = self.patch_embed(patchify(x.astype(dtype), config.patch_size))  # [B, T, D]
            if self.pos_embed is None:
                hidden = config.dims[1]
                tokens = tokens + jnp.asarray(sincos_pos_embed(config.grid, hidden), dtype)
            else:
                tokens = tokens + self.pos_embed[...].astype(dtype)
            tokens = constrain(tokens, ("batch", "length", "embed"))
            c = self.conditioning(t, class_labels, pooled)  # [B, D]
            tokens = self.run_blocks(tokens, c, context, context_mask)
            out = self.final(tokens, c)  # [B, T, p * p * output_channels]
            return unpatchify(out, config.patch_size, config.grid).astype(jnp.float32)

    def conditioning(self, t, class_labels, pooled) -> jax.Array:
        """c [B, D] = timestep MLP (+ class embedding) (+ pooled text projection)."""
        # [sin | cos] (the U-Net's convention); the paper's [cos | sin] is a row permutation of
        # time_in's kernel, so the two are the same family of networks.
        features = layers.timestep_embedding(t, FREQUENCY_DIM)
        c = self.time_out(nnx.silu(self.time_in(features)))
        if self.class_embed is not None:
            if class_labels is None:  # unconditional: the reserved "no class" row
                class_labels = jnp.full(t.shape, self.config.num_classes, jnp.int32)
            c = c + self.class_embed(class_labels)
        if pooled is not None:
            c = c + self.pooled_out(nnx.silu(self.pooled_in(pooled.astype(c.dtype))))
        return c

    def run_blocks(self, x, c, context, context_mask) -> jax.Array:
        """The transformer blocks, scanned or unrolled, each optionally rematerialised."""
        depth = self.config.dims[0]
        keys = None if self.dropout_rngs is None else jax.random.split(self.dropout_rngs(), depth)

        def apply_block(block: DiTBlock, x, c, context, context_mask, key):
            return block(x, c, context, context_mask, key)

        if self.config.remat:
            apply_block = nnx.remat(apply_block)
        if self.config.use_scan:

            @nnx.scan(in_axes=(0, nnx.Carry, None, None, None, 0), out_axes=nnx.Carry)
            def scan_blocks(block, x, c, context, context_mask, key):
                return apply_block(block, x, c, context, context_mask, key)

            return scan_blocks(self.blocks, x, c, context, context_mask, keys)
        for index, block in enumerate(self.blocks):
            key = None if keys is None else keys[index]
            x = apply_block(block, x, c, context, context_mask, key)
        return x
