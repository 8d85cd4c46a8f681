"""BERT encoder (Devlin et al. 2019), as transformers' `BertModel`; all-MiniLM-L6-v2 is one.

Word + absolute position + token-type embeddings and a LayerNorm, then post-LN layers
(LN(x + attention(x)), LN(x + MLP(x))). The pooled output is the sentence embedding of
sentence-transformers' all-MiniLM-L6-v2: mean of the real tokens' last hidden states, L2
normalised (BERT's own tanh pooler is not used).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.text_encoders import blocks
from models.text_encoders.family import EncoderFamily, fields_from_hf
from models.text_encoders.tokenizer import SpecialTokens
from models.text_encoders.weights import WeightRule, linear_rules, norm_rules

_HF_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
    "position_embedding_type": "position_embedding_type",
    "pad_token_id": "pad_token_id",
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of transformers' `BertConfig` that the encoder uses."""

    vocab_size: int = 30522
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"
    pad_token_id: int | None = 0

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> BertConfig:
        """From a BertModel config.json (absolute position embeddings only)."""
        config = fields_from_hf(cls, hf, _HF_KEYS)
        if config.position_embedding_type != "absolute":
            raise ValueError(
                f"Only absolute BERT position embeddings are supported, got "
                f"position_embedding_type={config.position_embedding_type!r}."
            )
        return config

    @property
    def pooled_size(self) -> int:
        return self.hidden_size

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings


class BertLayer(nnx.Module):
    """Post-LN block: x = LN(x + attention(x)), then x = LN(x + MLP(x))."""

    def __init__(self, config: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        width, eps = config.hidden_size, config.layer_norm_eps
        self.attention = blocks.SelfAttention(
            width, config.num_heads, width // config.num_heads, dtype=dtype, rngs=rngs
        )
        self.norm_attention = blocks.layer_norm(width, eps, dtype=dtype, rngs=rngs)
        self.mlp = blocks.FeedForward(
            width, config.intermediate_size, config.hidden_act, dtype=dtype, rngs=rngs
        )
        self.norm_mlp = blocks.layer_norm(width, eps, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        x = self.norm_attention(x + self.attention(x, mask=key_mask))
        return self.norm_mlp(x + self.mlp(x))


class BertEncoder(nnx.Module):
    """input_ids [B, L], mask [B, L] -> (last hidden state [B, L, D], sentence embedding [B, D])."""

    def __init__(self, config: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        width = config.hidden_size
        common = dict(dtype=dtype, rngs=rngs)
        self.token_embedding = blocks.embedding(
            config.vocab_size, width, ("vocab", "embed"), **common
        )
        self.position_embedding = blocks.embedding(
            config.max_position_embeddings, width, (None, "embed"), **common
        )
        self.token_type_embedding = blocks.embedding(
            config.type_vocab_size, width, (None, "embed"), **common
        )
        self.embedding_norm = blocks.layer_norm(width, config.layer_norm_eps, **common)
        self.layers = nnx.List([BertLayer(config, **common) for _ in range(config.num_layers)])

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        length = input_ids.shape[1]
        # Single-segment input: every token has token type 0.
        h = (
            self.token_embedding(input_ids)
            + self.position_embedding(jnp.arange(length))[None]
            + self.token_type_embedding(jnp.zeros((), jnp.int32))
        )
        h = self.embedding_norm(h)
        key_mask = blocks.padding_mask(attention_mask)
        for layer in self.layers:
            h = layer(h, key_mask)
        return h, l2_normalize(blocks.masked_mean(h, attention_mask))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(|x|, eps) along the last axis (torch.nn.functional.normalize)."""
    norm = jnp.linalg.norm(x.astype(jnp.float32), axis=-1, keepdims=True)
    return (x / jnp.maximum(norm, eps)).astype(x.dtype)


def _weight_rules() -> tuple[WeightRule, ...]:
    layer = r"encoder\.layer\.(\d+)\."
    return (
        WeightRule(r"embeddings\.word_embeddings\.weight", "token_embedding/embedding"),
        WeightRule(r"embeddings\.position_embeddings\.weight", "position_embedding/embedding"),
        WeightRule(r"embeddings\.token_type_embeddings\.weight", "token_type_embedding/embedding"),
        *norm_rules(r"embeddings\.LayerNorm", "embedding_norm"),
        *[
            rule
            for name in ("query", "key", "value")
            for rule in linear_rules(
                layer + rf"attention\.self\.{name}", rf"layers/\1/attention/{name}"
            )
        ],
        *linear_rules(layer + r"attention\.output\.dense", r"layers/\1/attention/out"),
        *norm_rules(layer + r"attention\.output\.LayerNorm", r"layers/\1/norm_attention"),
        *linear_rules(layer + r"intermediate\.dense", r"layers/\1/mlp/fc_act"),
        *linear_rules(layer + r"output\.dense", r"layers/\1/mlp/fc_out"),
        *norm_rules(layer + r"output\.LayerNorm", r"layers/\1/norm_mlp"),
    )


FAMILY = EncoderFamily(
    model_types=("bert",),
    parse_config=BertConfig.from_hf,
    build=lambda config, dtype, rngs: BertEncoder(config, dtype=dtype, rngs=rngs),
    weight_rules=_weight_rules(),
    # A buffer, and the [CLS] tanh pooler that the sentence embedding does not use.
    ignored_weights=(r"embeddings\.position_ids", r"pooler\..*"),
    special_tokens=SpecialTokens(bos="[CLS]", eos="[SEP]", pad="[PAD]"),
)
