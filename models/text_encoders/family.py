"""What the loader needs to know about one kind of text encoder checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import tokenizers
from etils.epath import Path
from flax import nnx

from models.text_encoders.tokenizer import SpecialTokens
from models.text_encoders.weights import WeightRule


class EncoderConfig(Protocol):
    """The fields every family's frozen config provides."""

    vocab_size: int  # rows of the token embedding
    hidden_size: int  # width D of the last hidden state [B, L, D]
    pad_token_id: int | None  # config.json's pad id (a fallback for the tokenizer)

    @property
    def pooled_size(self) -> int: ...

    @property
    def max_positions(self) -> int | None: ...  # longest input; None: no limit (T5)


class EncoderNetwork(Protocol):
    """An NNX module: (input_ids [B, L], mask [B, L] bool) -> (hidden [B, L, D], pooled)."""

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]: ...


@dataclasses.dataclass(frozen=True)
class EncoderFamily:
    """Config parsing, network, checkpoint layout and special tokens of one architecture."""

    model_types: tuple[str, ...]  # accepted config.json "model_type" values
    parse_config: Callable[[dict[str, Any]], EncoderConfig]  # config.json -> our config
    build: Callable[[Any, Any, nnx.Rngs], EncoderNetwork]  # (config, dtype, rngs) -> network
    weight_rules: tuple[WeightRule, ...]  # HF tensor names -> our parameter paths
    ignored_weights: tuple[str, ...]  # regexes of checkpoint tensors the encoder does not use
    special_tokens: SpecialTokens
    # Builds the tokenizer from vocab.json + merges.txt where tokenizer.json is absent (CLIP).
    tokenizer_from_bpe_files: Callable[[Path], tokenizers.Tokenizer] | None = None


def fields_from_hf(cls: type, hf: dict[str, Any], keys: dict[str, str]) -> Any:
    """A config dataclass from config.json values; `keys` maps our field -> its JSON key."""
    return cls(**{field: hf[key] for field, key in keys.items() if key in hf})
