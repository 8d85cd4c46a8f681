"""CLIP score: how well generated images match their prompts, by a pretrained CLIP.

Hessel et al. 2021 ("CLIPScore", eq. 1) define CLIP-S(c, v) = w * max(cos(E_c, E_v), 0) with
w = 2.5. Diffusion papers usually report torchmetrics' `CLIPScore`, which is 100 * cos instead,
so `scale` defaults to 100; pass `scale=HESSEL_W` for the paper's number. One more difference:
torchmetrics clips the *mean* over a batch at 0 (max(mean(100 cos), 0)), we clip each image
(the paper's per-example score); the two means agree whenever no cosine is negative, which is
the usual case for real CLIP models on captioned images (cosines of ~0.2-0.35).

Preprocessing is close to, not bit-for-bit, the PIL path of CLIPImageProcessor
(`CLIPImageProcessorPil`; transformers 5 defaults to a torchvision backend when it is installed):
the shorter side resized to the model's image_size with bicubic (jax.image.resize with
antialias: the same a=-0.5 Keys kernel, widened when downsampling, as PIL's BICUBIC), then
transformers' centre crop and the checkpoint's mean/std (preprocessor_config.json, else
OpenAI CLIP's). Like PIL we resize width, then height, clipping to [0, 1] after each pass; unlike
PIL we stay in float instead of rounding to 8 bits after each pass, so on 8-bit images the two
differ by at most about one grey level (0.3 on average; tests/evaluation/test_clip_score.py).
Only the sizes read from config.json matter: preprocessor_config.json's size/crop_size are not
read (they equal image_size in OpenAI's checkpoints).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from etils.epath import Path

from models.text_encoders import clip, clip_vision, load_text_encoder, weights
from models.text_encoders.encoder import TextEncoder

Params = dict[Any, Any]

HESSEL_W = 2.5  # Hessel et al. 2021's w: CLIP-S in [0, 2.5]
TORCHMETRICS_SCALE = 100.0  # torchmetrics' CLIPScore: in [0, 100]
# OpenAI CLIP's normalisation (CLIPImageProcessor's defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILE = "preprocessor_config.json"


def preprocess(
    images: jax.Array,
    image_size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> jax.Array:
    """Images [B, H, W, C] in [0, 1], C = 1 or 3, any size -> CLIP pixels [B, S, S, 3].

    Bicubic resize of the shorter side to S (longer side: int(S * long / short), as
    transformers), centre crop at ((H' - S) // 2, (W' - S) // 2), then (x - mean) / std.
    """
    batch, height, width, channels = images.shape
    if channels not in (1, 3):
        raise ValueError(f"CLIP takes 1- or 3-channel images, got shape {images.shape}.")
    images = jnp.broadcast_to(images.astype(jnp.float32), (batch, height, width, 3))
    if height <= width:
        new_height, new_width = image_size, int(image_size * width / height)
    else:
        new_height, new_width = int(image_size * height / width), image_size
    # Width first, then height, clipping after each pass where PIL's 8-bit image clips.
    for shape in ((batch, height, new_width, 3), (batch, new_height, new_width, 3)):
        if shape != images.shape:
            resized = jax.image.resize(images, shape, method="bicubic", antialias=True)
            images = jnp.clip(resized, 0.0, 1.0)
    top, left = (new_height - image_size) // 2, (new_width - image_size) // 2
    images = images[:, top : top + image_size, left : left + image_size]
    return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def clip_scores(
    image_embeds: jax.Array, text_embeds: jax.Array, scale: float = TORCHMETRICS_SCALE
) -> jax.Array:
    """scale * max(cos(image_embeds[i], text_embeds[i]), 0) for each pair -> [B]."""
    image = image_embeds / jnp.linalg.norm(image_embeds, axis=-1, keepdims=True)
    text = text_embeds / jnp.linalg.norm(text_embeds, axis=-1, keepdims=True)
    return scale * jnp.maximum(jnp.sum(image * text, axis=-1), 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class ClipScorer:
    """A frozen CLIPModel: text tower (with tokenizer), image tower, projections."""

    text_encoder: TextEncoder  # tokenizer + text tower; pooled = EOS state before projection
    vision: clip_vision.LoadedVision  # image tower, visual/text projections, logit_scale
    mean: tuple[float, float, float]  # per-channel normalisation of [0, 1] pixels
    std: tuple[float, float, float]

    @property
    def image_size(self) -> int:
        return self.vision.config.image_size

    def apply_images(self, vision_params: Params, images: jax.Array) -> jax.Array:
        """Pure: images [B, H, W, C] in [0, 1] -> image_embeds [B, P] (not normalised)."""
        pixels = preprocess(images, self.image_size, self.mean, self.std)
        with jax.named_scope("clip_image_tower"):
            return self.vision.network.apply(vision_params, pixels).image_embeds

    def apply_texts(
        self, params: Params, input_ids: jax.Array, attention_mask: jax.Array
    ) -> jax.Array:
        """Pure: params {"text", "vision"}, tokens [B, L] -> text_embeds [B, P] (not normalised)."""
        pooled = self.text_encoder.apply(params["text"], input_ids, attention_mask).pooled
        return clip_vision.project_text(params["vision"], pooled)

    def image_embeddings(self, images: jax.Array) -> jax.Array:
        """image_embeds [B, P] of images [B, H, W, C] in [0, 1] (compiled once per shape)."""
        return self._jitted_images(self.vision.params, jnp.asarray(images, jnp.float32))

    def text_embeddings(self, prompts: Sequence[str]) -> jax.Array:
        """text_embeds [B, P] of the prompts (tokenized to the text tower's max_length)."""
        input_ids, mask = self.text_encoder.tokenize(list(prompts))
        params = {"text": self.text_encoder.params, "vision": self.vision.params}
        return self._jitted_texts(params, input_ids, mask)

    def clip_score(
        self, images: jax.Array, prompts: Sequence[str], scale: float = TORCHMETRICS_SCALE
    ) -> jax.Array:
        """Per-image score [B]: scale * max(cos(image i, prompt i), 0); HESSEL_W for CLIP-S."""
        if len(images) != len(prompts):
            raise ValueError(f"clip_score got {len(images)} images but {len(prompts)} prompts.")
        return clip_scores(self.image_embeddings(images), self.text_embeddings(prompts), scale)

    @functools.cached_property
    def _jitted_images(self) -> Callable[[Params, jax.Array], jax.Array]:
        return jax.jit(self.apply_images)

    @functools.cached_property
    def _jitted_texts(self) -> Callable[[Params, Any, Any], jax.Array]:
        return jax.jit(self.apply_texts)


def load_clip(
    path: str | os.PathLike, max_length: int | None = None, dtype: str = "float32"
) -> ClipScorer:
    """A Hugging Face CLIPModel directory (config.json, model.safetensors, tokenizer.json, and
    optionally preprocessor_config.json) as a frozen `ClipScorer`.

    Args:
      path: the directory.
      max_length: tokens per prompt; default the text tower's positions (77 for OpenAI CLIP).
      dtype: parameter and compute dtype of both towers.

    Raises:
      ValueError: a directory without the vision tower or projections (e.g. CLIPTextModel).
    """
    vision = clip_vision.load_vision(path, dtype)  # first: names what a text-only dir lacks
    directory = Path(path)
    if max_length is None:
        max_length = clip.CLIPTextConfig.from_hf(weights.read_config(directory)).max_positions
    text_encoder = load_text_encoder("clip", directory, max_length, dtype)
    mean, std = _normalisation(directory)
    return ClipScorer(text_encoder=text_encoder, vision=vision, mean=mean, std=std)


def _normalisation(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean / image_std of preprocessor_config.json when present, else CLIP's."""
    config_path = directory / PREPROCESSOR_FILE
    if not config_path.is_file():
        return CLIP_MEAN, CLIP_STD
    config = json.loads(config_path.read_text())
    mean = tuple(float(v) for v in config.get("image_mean", CLIP_MEAN))
    std = tuple(float(v) for v in config.get("image_std", CLIP_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{str(config_path)!r}: image_mean and image_std need 3 values each.")
    return mean, std
