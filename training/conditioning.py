"""What the network is conditioned on (nothing, class labels or text) and the null condition.

Every conditional example carries one int id: its class label, or its row in a caption bank (the
text encoder's output for a fixed caption set, computed once). The last id is the null condition
(the "no class" label, or the empty prompt), which condition dropout substitutes during training
so that one network also serves as the unconditional branch of classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from errors import ConfigError
from schema import field, one_of, require

KINDS = ("none", "class", "text")


@dataclasses.dataclass(frozen=True)
class ConditioningConfig:
    """`config.conditioning`: what the network is conditioned on."""

    kind: str = field("none", "'none' | 'class' (data labels) | 'text' (captions).")
    dropout: float = field(0.1, "Chance of the null condition per example (trains CFG).")

    def validate(self) -> None:
        """Raises ConfigError naming the `conditioning.*` field."""
        one_of("conditioning.kind", self.kind, KINDS)
        require(
            0.0 <= self.dropout < 1.0, "conditioning.dropout", self.dropout, "must be in [0, 1)."
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TextBank:
    """Text-encoder outputs of a list of prompts, one row per prompt: a lookup table for ids."""

    tokens: jax.Array  # [N, L, D] last hidden states
    mask: jax.Array  # [N, L] True on real tokens
    pooled: jax.Array | None  # [N, P] pooled / sentence embedding (None: the model takes none)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def take(self, ids: jax.Array) -> dict[str, jax.Array]:
        """The network's text arguments for rows `ids` [B]."""
        kwargs = {
            "context": jnp.take(self.tokens, ids, axis=0),
            "context_mask": jnp.take(self.mask, ids, axis=0),
        }
        if self.pooled is not None:
            kwargs["pooled"] = jnp.take(self.pooled, ids, axis=0)
        return kwargs


def encode_prompts(encoder: Any, prompts: Sequence[str]) -> TextBank:
    """Runs the frozen text encoder once over `prompts` (before any training).

    The bank is kept as host (numpy) arrays: every process computes the same one, and jit places
    it replicated on the global mesh, which also works across processes.
    """
    embeddings = encoder.encode(list(prompts))
    return TextBank(
        tokens=np.asarray(embeddings.tokens, np.float32),
        mask=np.asarray(embeddings.mask, bool),
        pooled=np.asarray(embeddings.pooled, np.float32) if encoder.use_pooled else None,
    )


def caption_bank(encoder: Any, captions: Sequence[str]) -> TextBank:
    """The bank of a dataset's captions plus the empty prompt as its last (null) row."""
    return encode_prompts(encoder, [*captions, ""])


def null_id(kind: str, num_classes: int, bank: TextBank | None) -> int:
    """The id of the null condition: the reserved class row, or the bank's empty prompt."""
    if kind == "class":
        return num_classes
    if kind == "text":
        return len(bank) - 1
    raise ValueError(f"conditioning.kind={kind!r} has no null condition.")


def batch_ids(kind: str, batch: dict[str, Any]) -> jax.Array | None:
    """The per-example condition ids of a batch: labels or caption ids (None when unconditional)."""
    if kind == "class":
        return batch["label"]
    if kind == "text":
        return batch["caption_id"]
    return None


def drop_conditions(key: jax.Array, ids: jax.Array, probability: float, null: int) -> jax.Array:
    """Replaces each id by `null` with the given probability (Ho & Salimans 2022, sec. 3.2)."""
    dropped = jax.random.bernoulli(key, probability, ids.shape)
    return jnp.where(dropped, jnp.asarray(null, ids.dtype), ids)


def model_kwargs(kind: str, ids: jax.Array | None, bank: TextBank | None) -> dict[str, jax.Array]:
    """The network's conditioning keyword arguments for ids [B]."""
    if kind == "class":
        return {"class_labels": ids}
    if kind == "text":
        return bank.take(ids)
    return {}


TEXT_FIELDS = ("context", "context_mask", "pooled")


def batch_conditions(
    kind: str,
    batch: dict[str, Any],
    bank: TextBank | None,
    key: jax.Array,
    dropout: float,
    null: int,
) -> dict[str, jax.Array]:
    """The network's conditioning kwargs for a training batch, after condition dropout.

    Batches carry ids (labels, caption ids) or, for free-text datasets, text embeddings that the
    host computed (`encode_batch_text`); a dropped example gets the null id / null embedding.
    """
    if kind == "text" and "context" in batch:
        cond = {name: batch[name] for name in TEXT_FIELDS if name in batch}
        if dropout <= 0:
            return cond
        dropped = jax.random.bernoulli(key, dropout, (batch["context"].shape[0],))
        null_rows = bank.take(jnp.full(dropped.shape, null, jnp.int32))
        return jax.tree.map(
            lambda c, n: jnp.where(dropped.reshape((-1,) + (1,) * (c.ndim - 1)), n, c),
            cond,
            null_rows,
        )
    ids = batch_ids(kind, batch)
    if ids is not None and dropout > 0:
        ids = drop_conditions(key, ids, dropout, null)
    return model_kwargs(kind, ids, bank)


def encode_batch_text(encoder: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """Replaces a host batch's `text` strings by the frozen encoder's embeddings (free text)."""
    if "text" not in batch:
        return batch
    embeddings = encoder.encode([str(text) for text in batch["text"]])
    rest = {name: value for name, value in batch.items() if name != "text"}
    text = {
        "context": np.asarray(embeddings.tokens, np.float32),
        "context_mask": np.asarray(embeddings.mask, bool),
    }
    if encoder.use_pooled:
        text["pooled"] = np.asarray(embeddings.pooled, np.float32)
    return {**rest, **text}


def parse_class_labels(text: str, num_classes: int) -> np.ndarray:
    """'3,5' -> [3, 5]; '' -> every class. Raises naming `sampler.class_labels`."""
    if not text.strip():
        return np.arange(num_classes, dtype=np.int32)
    try:
        labels = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"sampler.class_labels={text!r} must be comma-separated ints, e.g. '3,5'."
        ) from None
    if min(labels) < 0 or max(labels) >= num_classes:
        raise ConfigError(
            f"sampler.class_labels={text!r}: labels must be in [0, {num_classes - 1}]."
        )
    return np.array(labels, np.int32)


def parse_prompts(text: str) -> list[str]:
    """'a cat;a dog' -> ['a cat', 'a dog'] (empty parts dropped)."""
    return [part.strip() for part in text.split(";") if part.strip()]


@dataclasses.dataclass(frozen=True)
class SampleConditions:
    """Per-image conditioning of a sampling run: one row per image, prompts repeated in order."""

    cond: dict[str, Any]  # network kwargs, leaves [N, ...]
    uncond: dict[str, Any]  # the null condition or the negative prompt, same shapes
    prompt_ids: np.ndarray  # [N] index into `prompts` of each image
    prompts: tuple[str, ...]  # the prompts, or the class labels as strings


def sample_conditions(
    kind: str,
    *,
    per_prompt: int,
    prompts: str = "",
    negative_prompt: str = "",
    class_labels: str = "",
    num_classes: int = 0,
    default_prompts: Sequence[str] = (),
    encoder: Any = None,
) -> SampleConditions | None:
    """Conditions for `per_prompt` images of each prompt / label (None for unconditional models).

    Text: the prompts and the negative prompt are encoded once on the host; the negative prompt
    takes the unconditional branch's place (the empty prompt, trained as the null condition, is
    the default). Class: the labels, with the reserved null class as the unconditional branch.
    """
    if kind == "none":
        return None
    if kind == "class":
        labels = parse_class_labels(class_labels, num_classes)
        return labelled_conditions(
            kind,
            np.repeat(np.arange(len(labels)), per_prompt),
            prompts=tuple(str(label) for label in labels),
            num_classes=num_classes,
            class_ids=labels,
        )
    texts = parse_prompts(prompts) or list(default_prompts)
    if not texts:
        raise ConfigError("sampler.prompts is empty and the dataset has no captions to default to.")
    return labelled_conditions(
        kind,
        np.repeat(np.arange(len(texts)), per_prompt),
        prompts=tuple(texts),
        negative_prompt=negative_prompt,
        encoder=encoder,
    )


def labelled_conditions(
    kind: str,
    prompt_ids: np.ndarray,
    *,
    prompts: tuple[str, ...],
    negative_prompt: str = "",
    num_classes: int = 0,
    class_ids: Sequence[int] | None = None,
    encoder: Any = None,
) -> SampleConditions:
    """One row per entry of `prompt_ids` (an index into `prompts`), in that order.

    Class: `class_ids[i]` is the label of prompt i (default: i), the reserved null class the
    unconditional branch. Text: prompts and negative prompt encoded once on the host.
    """
    prompt_ids = np.asarray(prompt_ids, np.int32)
    if kind == "class":
        ids = np.asarray(range(len(prompts)) if class_ids is None else class_ids)[prompt_ids]
        return SampleConditions(
            cond={"class_labels": jnp.asarray(ids, jnp.int32)},
            uncond={"class_labels": jnp.full(ids.shape, num_classes, jnp.int32)},
            prompt_ids=prompt_ids,
            prompts=prompts,
        )
    bank = encode_prompts(encoder, [*prompts, negative_prompt])
    return SampleConditions(
        cond=bank.take(jnp.asarray(prompt_ids)),
        uncond=bank.take(jnp.full(prompt_ids.shape, len(prompts), jnp.int32)),
        prompt_ids=prompt_ids,
        prompts=prompts,
    )
