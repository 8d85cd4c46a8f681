"""CLIP text transformer (Radford et al. 2021), as transformers' `CLIPTextModel`.

Token + learned position embeddings, pre-LN layers with causal self-attention, a final
LayerNorm. The pooled output is the final hidden state at the end-of-text token (no
`text_projection`: that belongs to `CLIPTextModelWithProjection`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.text_encoders import blocks, clip_bpe
from models.text_encoders.family import EncoderFamily, fields_from_hf
from models.text_encoders.tokenizer import SpecialTokens
from models.text_encoders.weights import WeightRule, linear_rules, norm_rules

# transformers before PR #24773 wrote eos_token_id=2 into CLIP configs; with that value it pools
# at the largest token id (the EOS of the original vocabulary) instead of the first EOS.
LEGACY_EOS_TOKEN_ID = 2


# Our config field -> its config.json key (absent keys keep transformers' defaults).
_HF_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "max_position_embeddings": "max_position_embeddings",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """The fields of transformers' `CLIPTextConfig` that the forward pass uses."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_layers: int = 12
    num_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    pad_token_id: int | None = 1

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> CLIPTextConfig:
        """From a CLIPTextModel config.json, or the `text_config` of a full CLIPModel one."""
        text = hf.get("text_config", {}) if hf.get("model_type") == "clip" else hf
        return fields_from_hf(cls, text, _HF_KEYS)

    @property
    def pooled_size(self) -> int:
        return self.hidden_size

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings


class CLIPLayer(nnx.Module):
    """Pre-LN block: x + attention(LN(x)) with a causal mask, then x + MLP(LN(x))."""

    def __init__(self, config: CLIPTextConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        width, eps = config.hidden_size, config.layer_norm_eps
        self.norm_attention = blocks.layer_norm(width, eps, dtype=dtype, rngs=rngs)
        self.attention = blocks.SelfAttention(
            width, config.num_heads, width // config.num_heads, dtype=dtype, rngs=rngs
        )
        self.norm_mlp = blocks.layer_norm(width, eps, dtype=dtype, rngs=rngs)
        self.mlp = blocks.FeedForward(
            width, config.intermediate_size, config.hidden_act, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        x = x + self.attention(self.norm_attention(x), mask=key_mask, is_causal=True)
        return x + self.mlp(self.norm_mlp(x))


class CLIPTextTransformer(nnx.Module):
    """input_ids [B, L], mask [B, L] -> (last hidden state [B, L, D], EOS hidden [B, D])."""

    def __init__(self, config: CLIPTextConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.eos_token_id = config.eos_token_id
        width = config.hidden_size
        self.token_embedding = blocks.embedding(
            config.vocab_size, width, ("vocab", "embed"), dtype=dtype, rngs=rngs
        )
        self.position_embedding = blocks.embedding(
            config.max_position_embeddings, width, (None, "embed"), dtype=dtype, rngs=rngs
        )
        self.layers = nnx.List(
            [CLIPLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)]
        )
        self.final_norm = blocks.layer_norm(width, config.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        length = input_ids.shape[1]
        h = self.token_embedding(input_ids) + self.position_embedding(jnp.arange(length))[None]
        key_mask = blocks.padding_mask(attention_mask)
        for layer in self.layers:
            h = layer(h, key_mask)
        h = self.final_norm(h)  # [B, L, D]
        eos = eos_positions(input_ids, self.eos_token_id)
        return h, h[jnp.arange(h.shape[0]), eos]


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """Index [B] of each sequence's end-of-text token, by transformers' rule."""
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)  # the first EOS (padding may be EOS)


def _weight_rules() -> tuple[WeightRule, ...]:
    # CLIPTextModel checkpoints written before transformers 5 (and full CLIPModel ones) put the
    # text tower under "text_model.".
    prefix = r"(?:text_model\.)?"
    layer = prefix + r"encoder\.layers\.(\d+)\."
    projections = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}
    return (
        WeightRule(prefix + r"embeddings\.token_embedding\.weight", "token_embedding/embedding"),
        WeightRule(
            prefix + r"embeddings\.position_embedding\.weight", "position_embedding/embedding"
        ),
        *[
            rule
            for hf_name, ours in projections.items()
            for rule in linear_rules(
                layer + rf"self_attn\.{hf_name}", rf"layers/\1/attention/{ours}"
            )
        ],
        *norm_rules(layer + r"layer_norm1", r"layers/\1/norm_attention"),
        *norm_rules(layer + r"layer_norm2", r"layers/\1/norm_mlp"),
        *linear_rules(layer + r"mlp\.fc1", r"layers/\1/mlp/fc_act"),
        *linear_rules(layer + r"mlp\.fc2", r"layers/\1/mlp/fc_out"),
        *norm_rules(prefix + r"final_layer_norm", "final_norm"),
    )


FAMILY = EncoderFamily(
    model_types=("clip_text_model", "clip"),
    parse_config=CLIPTextConfig.from_hf,
    build=lambda config, dtype, rngs: CLIPTextTransformer(config, dtype=dtype, rngs=rngs),
    weight_rules=_weight_rules(),
    ignored_weights=(
        r"(?:text_model\.)?embeddings\.position_ids",  # a buffer, not a weight
        r"vision_model\..*",  # the image tower and heads of a full CLIPModel
        r"visual_projection\..*",
        r"text_projection\..*",
        r"logit_scale",
    ),
    special_tokens=SpecialTokens(bos="<|startoftext|>", eos="<|endoftext|>", pad="<|endoftext|>"),
    tokenizer_from_bpe_files=clip_bpe.clip_tokenizer,
)
