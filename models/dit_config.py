"""DiTConfig: the typed view of `config.model` for the DiT (`models/dit.py`), with the sizes of
Table 1 of Peebles & Xie 2023 and the checks that run before anything is built or compiled.
"""

from __future__ import annotations

import dataclasses

from errors import ConfigError
from models import layers
from schema import field

DTYPES = layers.COMPUTE_DTYPES
# size -> (depth, hidden size, heads), Table 1 of the paper.
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
POS_EMBEDS = ("sincos", "learned")


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Typed view of `config.model` plus the data shape and optional conditioning."""

    image_size: int = 32  # set from data.image_size
    in_channels: int = 4  # set from data.channels
    out_channels: int = 4
    size: str = field("S", "S | B | L | XL: depth / hidden size / heads from the DiT paper.")
    patch_size: int = field(2, "Side of the square patches; must divide data.image_size.")
    depth: int | None = field(None, "Override of the size's depth (None: the size's).")
    hidden_size: int | None = field(None, "Override of the size's width (None: the size's).")
    num_heads: int | None = field(None, "Override of the size's heads (None: the size's).")
    mlp_ratio: float = field(4.0, "MLP width / hidden size.")
    pos_embed: str = field("sincos", "'sincos': fixed 2-D sine-cosine (MAE); 'learned'.")
    num_classes: int | None = None  # class-conditional when set; index num_classes = "no class"
    context_dim: int | None = None  # cross-attention to text tokens when set
    pooled_dim: int | None = None  # a pooled text embedding added to the conditioning vector
    learn_sigma: bool = field(
        False, "Output 2x channels for a learned variance (the loss does not use it: keep False)."
    )
    use_scan: bool = field(True, "Stack the blocks and scan over them: compile time flat in depth.")
    remat: bool = field(False, "Recompute each block's activations in the backward pass.")
    dropout: float = field(0.0, "On the attention and MLP outputs (training only).")
    dtype: str = field("float32", "'bfloat16': the network computes in bf16 (state stays fp32).")
    attention_impl: str | None = field(
        None,
        "Attention kernel: None lets JAX choose, 'xla', 'cudnn' (GPU + bfloat16) or 'pallas_tpu' "
        "(Pallas flash attention: TPU only).",
    )

    @property
    def dims(self) -> tuple[int, int, int]:
        """(depth, hidden size, heads): the size's numbers with the overrides applied."""
        depth, hidden, heads = SIZES[self.size]
        return (
            depth if self.depth is None else self.depth,
            hidden if self.hidden_size is None else self.hidden_size,
            heads if self.num_heads is None else self.num_heads,
        )

    @property
    def grid(self) -> int:
        """Tokens per side."""
        return self.image_size // self.patch_size

    @property
    def output_channels(self) -> int:
        """Channels of the network's output (doubled when it also predicts the variance)."""
        return self.out_channels * (2 if self.learn_sigma else 1)

    def validate(self) -> None:
        """Raises ConfigError naming the bad field before anything is built or compiled."""
        if self.size not in SIZES:
            raise ConfigError(f"model.size={self.size!r} is not one of {list(SIZES)}.")
        for name in ("depth", "hidden_size", "num_heads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"model.{name}={value} must be a positive int or None.")
        _, hidden, heads = self.dims
        if hidden % heads:
            raise ConfigError(
                f"model.num_heads={heads} must divide the hidden size {hidden} "
                f"(model.size={self.size!r}, model.hidden_size={self.hidden_size})."
            )
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise ConfigError(
                f"model.patch_size={self.patch_size} must be a positive divisor of "
                f"data.image_size={self.image_size} (e.g. 2, 4 or 8)."
            )
        if self.pos_embed not in POS_EMBEDS:
            raise ConfigError(f"model.pos_embed={self.pos_embed!r} is not one of {POS_EMBEDS}.")
        if self.pos_embed == "sincos" and hidden % 4:
            raise ConfigError(
                f"model.pos_embed='sincos' needs a hidden size divisible by 4 (sine and cosine "
                f"of two coordinates); model.hidden_size is {hidden}."
            )
        if not 1 <= hidden * self.mlp_ratio < float("inf"):  # NaN and overflow included
            raise ConfigError(
                f"model.mlp_ratio={self.mlp_ratio} gives the MLP a width of "
                f"{hidden * self.mlp_ratio}; allowed: a finite width >= 1."
            )
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1.")
        layers.validate_shared_fields(self)
