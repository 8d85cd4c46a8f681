"""UNetConfig: the typed view of `config.model` for the U-Net (`models/unet.py`), its checks, and
its translation to and from diffusers' `UNet2DConditionModel` config.json (Stable Diffusion 1.x
and 2.x U-Nets; weights in `models/unet_weights.py`).

The defaults are Ho et al.'s DDPM U-Net; `from_diffusers` sets the fields Stable Diffusion
needs (timestep features, norm eps, heads per level, Downsample padding, bias-free q/k/v).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import schema
from errors import ConfigError
from models import layers
from schema import field

DTYPES = layers.COMPUTE_DTYPES
FREQ_SHIFTS = (0, 1)
DIFFUSERS_CLASS = "UNet2DConditionModel"
CROSS_ATTN_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_ATTN_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
MID_BLOCK = "UNetMidBlock2DCrossAttn"
ACTIVATIONS = ("silu", "swish")  # diffusers' names for the same SiLU
# UNet2DConditionModel.__init__'s defaults (diffusers 0.42) of the keys that become our fields.
_DIFFUSERS_DEFAULTS = {
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": [CROSS_ATTN_DOWN] * 3 + [PLAIN_DOWN],
    "mid_block_type": MID_BLOCK,
    "up_block_types": [PLAIN_UP] + [CROSS_ATTN_UP] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "attention_head_dim": 8,
    "use_linear_projection": False,
}
# Keys that must keep a value SD 1.x / 2.x use: (allowed values, what another value switches on).
_FIXED = {
    "center_input_sample": ((False,), "inputs rescaled to 2x - 1"),
    "only_cross_attention": ((False,), "transformer blocks without self-attention"),
    "mid_block_only_cross_attention": ((None, False), "a mid block without self-attention"),
    "mid_block_scale_factor": ((1,), "a rescaled mid block"),
    "transformer_layers_per_block": ((1,), "several transformer blocks per layer (SDXL)"),
    "reverse_transformer_layers_per_block": ((None,), "per-block transformer depths (SDXL)"),
    "num_attention_heads": ((None,), "heads given as num_attention_heads"),
    "dual_cross_attention": ((False,), "two cross-attentions"),
    "encoder_hid_dim": ((None,), "a projection of the text embeddings"),
    "encoder_hid_dim_type": ((None,), "a projection of the text embeddings"),
    "class_embed_type": ((None,), "class embeddings"),
    "num_class_embeds": ((None,), "class embeddings"),
    "class_embeddings_concat": ((False,), "class embeddings"),
    "projection_class_embeddings_input_dim": ((None,), "projected class / added embeddings"),
    "addition_embed_type": ((None,), "added text / time-id embeddings (SDXL)"),
    "addition_time_embed_dim": ((None,), "added time-id embeddings (SDXL)"),
    "time_cond_proj_dim": ((None,), "a guidance-scale embedding (LCM)"),
    "time_embedding_type": (("positional",), "Fourier timestep features"),
    "time_embedding_dim": ((None,), "a timestep embedding other than 4 x block_out_channels[0]"),
    "time_embedding_act_fn": ((None,), "an activation after the timestep embedding"),
    "timestep_post_act": ((None,), "an activation inside the timestep MLP"),
    "resnet_time_scale_shift": (("default",), "scale-shift timestep conditioning"),
    "resnet_skip_time_act": ((False,), "resnets without SiLU on the timestep embedding"),
    "resnet_out_scale_factor": ((1,), "rescaled resnet outputs"),
    "conv_in_kernel": ((3,), "another conv_in kernel size"),
    "conv_out_kernel": ((3,), "another conv_out kernel size"),
    "attention_type": (("default",), "gated (GLIGEN) attention"),
    "cross_attention_norm": ((None,), "normalised cross-attention inputs"),
}
# Keys without effect here: jax.nn.dot_product_attention computes scores and softmax in float32
# whatever the input dtype (what upcast_attention asks for); the other needs added embeddings.
_IGNORED = ("upcast_attention", "addition_embed_type_num_heads")


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
    heads_per_level: tuple[int, ...] = field(
        (), "Heads at each level, overriding num_heads (the mid block takes the last level's)."
    )
    dropout: float = field(0.1, "Dropout inside ResBlocks (training only).")
    num_groups: int = field(32, "GroupNorm groups.")
    norm_eps: float = field(
        1e-6,
        "GroupNorm eps of the ResBlocks, DDPM attention and output norm (Stable Diffusion: 1e-5; "
        "text-attention blocks keep 1e-6).",
    )
    flip_sin_to_cos: bool = field(
        False, "Timestep features [cos | sin] instead of [sin | cos] (Stable Diffusion: True)."
    )
    freq_shift: int = field(
        1, "Timestep frequencies exp(-ln(1e4) i / (half - freq_shift)): 1 DDPM, 0 Stable Diffusion."
    )
    downsample_padding: int = field(
        0,
        "Zeros around each stride-2 conv: 0 pads bottom / right (TensorFlow 'SAME', DDPM), 1 "
        "every side (Stable Diffusion).",
    )
    qkv_bias: bool = field(True, "Biases on attention queries / keys / values (SD: False).")
    use_linear_projection: bool = field(
        True,
        "Text-attention in / out projections as Linear layers; False: as 1x1 convs (the same "
        "map, stored as SD 1.x stores it).",
    )
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
        "Attention kernel: None lets JAX choose, 'xla', 'cudnn' (fused flash attention: GPU "
        "only, model.dtype 'bfloat16') or 'pallas_tpu' (JAX's Pallas flash-attention kernel: "
        "TPU only; models/flash_attention.py).",
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

    def heads(self, level: int) -> int:
        """Attention heads at `level` (index into channel_mult)."""
        return self.heads_per_level[level] if self.heads_per_level else self.num_heads

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
        per_level = self.heads_per_level
        schema.require(
            not per_level or (len(per_level) == levels and min(per_level) >= 1),
            "model.heads_per_level",
            per_level,
            f"needs one positive entry per level ({levels}), or none.",
        )
        for level, mult in enumerate(self.channel_mult):
            channels = self.base_channels * mult
            if channels % self.num_groups:
                raise ConfigError(
                    f"model.num_groups={self.num_groups} must divide every level's channels; "
                    f"model.base_channels * mult = {channels} is not divisible."
                )
            heads_field = f"heads_per_level[{level}]" if per_level else "num_heads"
            if channels % self.heads(level):
                raise ConfigError(
                    f"model.{heads_field}={self.heads(level)} must divide every level's "
                    f"channels ({channels})."
                )
        missing = [r for r in self.attention_resolutions if r not in self.resolutions]
        if missing:
            raise ConfigError(
                f"model.attention_resolutions={self.attention_resolutions}: {missing} never "
                f"occur; the feature-map sizes are {self.resolutions} "
                f"(data.image_size={self.image_size}, halved per model.channel_mult level)."
            )
        schema.require(self.norm_eps > 0, "model.norm_eps", self.norm_eps, "must be > 0.")
        schema.one_of("model.freq_shift", self.freq_shift, FREQ_SHIFTS)
        schema.one_of(
            "model.downsample_padding", self.downsample_padding, layers.DOWNSAMPLE_PADDINGS
        )
        layers.validate_shared_fields(self)
        if self.conv_impl not in layers.CONV_IMPLS:
            raise ConfigError(
                f"model.conv_impl={self.conv_impl!r} is not one of {sorted(layers.CONV_IMPLS)}."
            )

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> UNetConfig:
        """From a UNet2DConditionModel config.json dict (absent keys take diffusers' defaults);
        ConfigError naming any key or value this U-Net cannot express."""
        config = {**_DIFFUSERS_DEFAULTS, **config}
        class_name = config.get("_class_name", DIFFUSERS_CLASS)
        schema.require(
            class_name == DIFFUSERS_CLASS,
            "_class_name",
            class_name,
            f"is not supported; only {DIFFUSERS_CLASS!r} is.",
        )
        known = (*_DIFFUSERS_DEFAULTS, *_FIXED, *_IGNORED)
        unknown = sorted(key for key in config if key not in known and not key.startswith("_"))
        if unknown:
            raise ConfigError(f"Unknown {DIFFUSERS_CLASS} config keys: {', '.join(unknown)}.")
        widths = config["block_out_channels"]
        schema.require(
            isinstance(widths, list | tuple)
            and len(widths) >= 1
            and all(isinstance(w, int) and w > 0 and w % widths[0] == 0 for w in widths),
            "block_out_channels",
            widths,
            "must be positive multiples of its first entry (the U-Net's base_channels).",
        )
        for key, (allowed, feature) in _FIXED.items():
            value = _uniform(config.get(key, allowed[0]))
            if key == "time_embedding_dim" and value == 4 * widths[0]:
                continue  # the width diffusers' default gives
            schema.require(
                value in allowed,
                key,
                config.get(key),
                f"is not supported ({feature}); allowed: {', '.join(map(repr, allowed))}.",
            )
        schema.require(
            config["mid_block_type"] == MID_BLOCK,
            "mid_block_type",
            config["mid_block_type"],
            f"is not supported; only {MID_BLOCK!r} is.",
        )
        schema.one_of("act_fn", config["act_fn"], ACTIVATIONS)
        levels = _attention_levels(config["down_block_types"], config["up_block_types"], widths)
        image_size = _one_value(config, "sample_size")
        schema.require(
            isinstance(image_size, int) and image_size > 0,
            "sample_size",
            config["sample_size"],
            "must be the (square) latent size the U-Net was trained at.",
        )
        base = widths[0]
        heads = config["attention_head_dim"]  # diffusers' name for the number of heads
        values = dict(
            image_size=image_size,
            in_channels=config["in_channels"],
            out_channels=config["out_channels"],
            base_channels=base,
            channel_mult=tuple(w // base for w in widths),
            num_res_blocks=_one_value(config, "layers_per_block"),
            attention_resolutions=tuple(image_size // 2**level for level in levels),
            num_heads=1 if isinstance(heads, list | tuple) else heads,
            heads_per_level=tuple(heads) if isinstance(heads, list | tuple) else (),
            dropout=config["dropout"],
            num_groups=config["norm_num_groups"],
            norm_eps=config["norm_eps"],
            flip_sin_to_cos=config["flip_sin_to_cos"],
            freq_shift=config["freq_shift"],
            downsample_padding=config["downsample_padding"],
            qkv_bias=False,
            use_linear_projection=config["use_linear_projection"],
            context_dim=_one_value(config, "cross_attention_dim"),
        )
        return schema.build(cls, values, "")

    def to_diffusers(self) -> dict[str, Any]:
        """The config.json dict diffusers' UNet2DConditionModel.from_pretrained reads."""
        schema.require(
            self.context_dim is not None,
            "context_dim",
            self.context_dim,
            "must be set: a UNet2DConditionModel attends to text (unconditional U-Nets are "
            "diffusers' UNet2DModel).",
        )
        for name in ("num_classes", "pooled_dim"):
            schema.require(
                getattr(self, name) is None,
                name,
                getattr(self, name),
                "has no UNet2DConditionModel equivalent here; only None.",
            )
        schema.require(
            not self.qkv_bias,
            "qkv_bias",
            self.qkv_bias,
            "must be False: UNet2DConditionModel's q / k / v carry no bias.",
        )
        schema.require(
            self.channel_mult[0] == 1,
            "channel_mult",
            self.channel_mult,
            "must start with 1: diffusers' conv_in and timestep features have "
            "block_out_channels[0] channels.",
        )
        attention = [size in self.attention_resolutions for size in self.resolutions]
        return {
            "_class_name": DIFFUSERS_CLASS,
            **{key: allowed[0] for key, (allowed, _) in _FIXED.items()},
            "sample_size": self.image_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "down_block_types": [CROSS_ATTN_DOWN if a else PLAIN_DOWN for a in attention],
            "mid_block_type": MID_BLOCK,
            "up_block_types": [CROSS_ATTN_UP if a else PLAIN_UP for a in reversed(attention)],
            "block_out_channels": [self.base_channels * m for m in self.channel_mult],
            "layers_per_block": self.num_res_blocks,
            "downsample_padding": self.downsample_padding,
            "dropout": self.dropout,
            "act_fn": "silu",
            "norm_num_groups": self.num_groups,
            "norm_eps": self.norm_eps,
            "cross_attention_dim": self.context_dim,
            "attention_head_dim": list(self.heads_per_level) or self.num_heads,
            "use_linear_projection": self.use_linear_projection,
            "upcast_attention": True,  # what ours computes (see _IGNORED)
        }


def _uniform(value: Any) -> Any:
    """A per-level list whose entries are all equal -> that entry; anything else unchanged."""
    if isinstance(value, list | tuple) and value and all(v == value[0] for v in value):
        return value[0]
    return value


def _one_value(config: dict[str, Any], key: str) -> Any:
    """config[key], a per-level list of equal entries read as one; ConfigError for unequal ones."""
    value = _uniform(config[key])
    schema.require(
        not isinstance(value, list | tuple), key, config[key], "must be the same at every level."
    )
    return value


def _attention_levels(down: list[str], up: list[str], widths: list[int]) -> list[int]:
    """Levels whose blocks cross-attend; ConfigError unless the up path mirrors the down path."""
    schema.require(
        isinstance(down, list | tuple)
        and len(down) == len(widths)
        and set(down) <= {CROSS_ATTN_DOWN, PLAIN_DOWN},
        "down_block_types",
        down,
        f"is not supported: one {CROSS_ATTN_DOWN!r} or {PLAIN_DOWN!r} per entry of "
        "block_out_channels.",
    )
    mirrored = [CROSS_ATTN_UP if kind == CROSS_ATTN_DOWN else PLAIN_UP for kind in reversed(down)]
    schema.require(
        list(up) == mirrored,
        "up_block_types",
        up,
        f"is not supported: with these down_block_types only {mirrored} (the down path mirrored).",
    )
    return [level for level, kind in enumerate(down) if kind == CROSS_ATTN_DOWN]
