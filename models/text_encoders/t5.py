"""T5 encoder (Raffel et al. 2020), as transformers' `T5EncoderModel`.

Token embedding (no position embedding), pre-norm layers with scale-only RMS norms, attention
with a learned relative-position bias (computed once from the first layer's table and shared
by every layer) and no 1/sqrt(d) logit scaling (T5 folds it into the initialisation), a ReLU or
gated-GELU feed-forward, a final RMS norm. Pooled output: mean of the real tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.text_encoders import blocks
from models.text_encoders.family import EncoderFamily, fields_from_hf
from models.text_encoders.tokenizer import SpecialTokens
from models.text_encoders.weights import WeightRule, linear_rules

_HF_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "d_model",
    "head_dim": "d_kv",
    "intermediate_size": "d_ff",
    "num_layers": "num_layers",
    "num_heads": "num_heads",
    "num_buckets": "relative_attention_num_buckets",
    "max_distance": "relative_attention_max_distance",
    "layer_norm_eps": "layer_norm_epsilon",
    "feed_forward_proj": "feed_forward_proj",
    "pad_token_id": "pad_token_id",
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The fields of transformers' `T5Config` that the encoder uses."""

    vocab_size: int = 32128
    hidden_size: int = 512
    head_dim: int = 64
    intermediate_size: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    num_buckets: int = 32
    max_distance: int = 128
    layer_norm_eps: float = 1e-6
    feed_forward_proj: str = "relu"  # "{act}" or "gated-{act}"
    pad_token_id: int | None = 0

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> T5Config:
        """From a T5 / mT5 config.json."""
        return fields_from_hf(cls, hf, _HF_KEYS)

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        # As T5Config: "gated-gelu" means the tanh approximation (the original T5 v1.1 code).
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.removeprefix("gated-")

    @property
    def pooled_size(self) -> int:
        return self.hidden_size

    @property
    def max_positions(self) -> None:
        return None  # relative positions: any length


class T5Layer(nnx.Module):
    """x + attention(RMSNorm(x)) with the shared position bias, then x + FF(RMSNorm(x))."""

    def __init__(self, config: T5Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
        width, eps = config.hidden_size, config.layer_norm_eps
        self.norm_attention = blocks.rms_norm(width, eps, dtype=dtype, rngs=rngs)
        self.attention = blocks.SelfAttention(
            width, config.num_heads, config.head_dim, use_bias=False, dtype=dtype, rngs=rngs
        )
        self.norm_mlp = blocks.rms_norm(width, eps, dtype=dtype, rngs=rngs)
        self.mlp = blocks.FeedForward(
            width,
            config.intermediate_size,
            config.activation,
            gated=config.gated,
            use_bias=False,
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, key_mask: jax.Array, position_bias: jax.Array) -> jax.Array:
        normed = self.norm_attention(x)
        x = x + self.attention(normed, mask=key_mask, bias=position_bias, scale=1.0)
        return x + self.mlp(self.norm_mlp(x))


class T5Encoder(nnx.Module):
    """input_ids [B, L], mask [B, L] -> (last hidden state [B, L, D], masked mean [B, D])."""

    def __init__(self, config: T5Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_distance
        self.token_embedding = blocks.embedding(
            config.vocab_size, config.hidden_size, ("vocab", "embed"), dtype=dtype, rngs=rngs
        )
        self.relative_attention_bias = blocks.embedding(
            config.num_buckets, config.num_heads, (None, "heads"), dtype=dtype, rngs=rngs
        )
        self.layers = nnx.List(
            [T5Layer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)]
        )
        self.final_norm = blocks.rms_norm(
            config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs
        )

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        length = input_ids.shape[1]
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance)
        # [L, L, H] -> [1, H, L, L], added to every layer's attention logits.
        position_bias = jnp.transpose(self.relative_attention_bias(buckets), (2, 0, 1))[None]
        key_mask = blocks.padding_mask(attention_mask)
        h = self.token_embedding(input_ids)
        for layer in self.layers:
            h = layer(h, key_mask, position_bias)
        h = self.final_norm(h)  # [B, L, D]
        return h, blocks.masked_mean(h, attention_mask)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket [L, L] (int32) of each key-minus-query offset, bidirectional (Raffel et al.).

    Half the buckets hold positive offsets, half the rest; within a half, distances below a
    quarter of `num_buckets` get one bucket each, longer ones log-spaced buckets up to
    `max_distance` (and the last bucket beyond). Computed in float32 with the same operation
    order as transformers, so distances on a bucket boundary (16, 32, 64 with the defaults) fall
    on the same side.
    """
    positions = np.arange(length)
    offset = positions[None, :] - positions[:, None]  # key - query
    half = num_buckets // 2
    max_exact = half // 2
    distance = np.abs(offset)
    log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
    scaled = (
        log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    )
    log_bucket = np.minimum(max_exact + scaled.astype(np.int32), half - 1)
    bucket = np.where(distance < max_exact, distance, log_bucket)
    return (np.where(offset > 0, half, 0) + bucket).astype(np.int32)


def _weight_rules() -> tuple[WeightRule, ...]:
    layer = r"encoder\.block\.(\d+)\.layer\."
    projections = {"q": "query", "k": "key", "v": "value", "o": "out"}
    feed_forward = {"wi": "fc_act", "wi_0": "fc_act", "wi_1": "fc_linear", "wo": "fc_out"}
    return (
        # Older checkpoints also store the tied copy encoder.embed_tokens (equal values).
        WeightRule(r"shared\.weight|encoder\.embed_tokens\.weight", "token_embedding/embedding"),
        WeightRule(
            r"encoder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
            "relative_attention_bias/embedding",
        ),
        *[
            rule
            for hf_name, ours in projections.items()
            for rule in linear_rules(
                layer + rf"0\.SelfAttention\.{hf_name}", rf"layers/\1/attention/{ours}", bias=False
            )
        ],
        WeightRule(layer + r"0\.layer_norm\.weight", r"layers/\1/norm_attention/scale"),
        *[
            rule
            for hf_name, ours in feed_forward.items()
            for rule in linear_rules(
                layer + rf"1\.DenseReluDense\.{hf_name}", rf"layers/\1/mlp/{ours}", bias=False
            )
        ],
        WeightRule(layer + r"1\.layer_norm\.weight", r"layers/\1/norm_mlp/scale"),
        WeightRule(r"encoder\.final_layer_norm\.weight", "final_norm/scale"),
    )


FAMILY = EncoderFamily(
    model_types=("t5", "mt5"),
    parse_config=T5Config.from_hf,
    build=lambda config, dtype, rngs: T5Encoder(config, dtype=dtype, rngs=rngs),
    weight_rules=_weight_rules(),
    ignored_weights=(r"decoder\..*", r"lm_head\..*"),  # a full T5ForConditionalGeneration
    special_tokens=SpecialTokens(bos=None, eos="</s>", pad="<pad>"),
)
