"""CLIP image tower (Radford et al. 2021) and the heads that join it to the text tower.

As transformers' `CLIPVisionTransformer`: a stride-p patch convolution without bias, a learned
class token prepended, learned position embeddings, a LayerNorm before the encoder
(`pre_layrnorm`), pre-LN bidirectional layers (MLP with the config's hidden_act: quick_gelu for
OpenAI CLIP), and `post_layernorm` on the class token's final state as the pooled output. A full
`CLIPModel` adds `visual_projection` and `text_projection` (bias-free Linears into the shared
embedding space) and `logit_scale`.

It lives in `text_encoders/` (where the design's map puts CLIP's two towers) rather than as
`models/clip_vision.py` because it is the other half of the same checkpoint, read by the same
`weights` rules and built from the same `blocks` as `clip.py`.
The text tower itself stays in `clip.py`; the pooled text state it returns is projected here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
from etils.epath import Path
from flax import nnx, struct

from models.functional import FunctionalModel, functionalize
from models.layers import partitioned
from models.text_encoders import blocks, clip, weights
from models.text_encoders.family import fields_from_hf
from models.text_encoders.weights import WeightRule, linear_rules, norm_rules

Params = dict[Any, Any]

# Our config field -> its key in the vision config.json section (absent keys keep defaults).
_HF_KEYS = {
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_channels": "num_channels",
    "image_size": "image_size",
    "patch_size": "patch_size",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
    "projection_dim": "projection_dim",
}
# A full CLIPModel's tensors outside the text tower, as (what it is, regex over tensor names).
REQUIRED_TENSORS = (
    ("the vision tower (vision_model.*)", r"vision_model\..*"),
    ("visual_projection.weight", r"visual_projection\.weight"),
    ("text_projection.weight", r"text_projection\.weight"),
    ("logit_scale", r"logit_scale"),
)


def _square(value: Any, name: str) -> int:
    """An int from config.json's int or [h, w] (transformers 5 allows pairs); CLIP is square."""
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"CLIP vision {name} must be square, got {value!r}.")
        value = value[0]
    return int(value)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """The fields of transformers' `CLIPVisionConfig` (+ the joint projection width) we use."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512  # CLIPModel: the top-level projection_dim

    def __post_init__(self):
        object.__setattr__(self, "image_size", _square(self.image_size, "image_size"))
        object.__setattr__(self, "patch_size", _square(self.patch_size, "patch_size"))
        if self.image_size % self.patch_size:
            raise ValueError(
                f"CLIP vision image_size={self.image_size} is not a multiple of "
                f"patch_size={self.patch_size}."
            )

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> CLIPVisionConfig:
        """From a full CLIPModel config.json (its `vision_config`) or a CLIPVisionModel one."""
        if hf.get("model_type") != "clip":
            return fields_from_hf(cls, hf, _HF_KEYS)
        # Old checkpoints also carry `vision_config_dict`; transformers lets it win.
        vision = {**(hf.get("vision_config") or {}), **(hf.get("vision_config_dict") or {})}
        vision.pop("projection_dim", None)  # CLIPModel projects with the top-level width
        if "projection_dim" in hf:
            vision["projection_dim"] = hf["projection_dim"]
        return fields_from_hf(cls, vision, _HF_KEYS)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@struct.dataclass
class VisionOutput:
    """What the image tower returns (a pytree: it passes through jit)."""

    hidden: jax.Array  # [B, 1 + N, D] last encoder state (no post_layernorm), class token first
    pooled: jax.Array  # [B, D] post_layernorm(class token): transformers' pooler_output
    image_embeds: jax.Array  # [B, P] visual_projection(pooled), not normalised


class PatchEmbedding(nnx.Module):
    """Non-overlapping p x p patches -> D channels: a stride-p convolution without bias."""

    def __init__(self, config: CLIPVisionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.patch_size = config.patch_size
        # torch's Conv2d layout [out, in, kh, kw], so checkpoint tensors load untransposed.
        shape = (config.hidden_size, config.num_channels, config.patch_size, config.patch_size)
        init = partitioned(blocks.normal, ("embed", None, None, None))
        self.kernel = nnx.Param(init(rngs.params(), shape, dtype))

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """pixels [B, S, S, C] -> patch features [B, N, D] in row-major patch order."""
        kernel = self.kernel[...]
        out = jax.lax.conv_general_dilated(
            pixels.astype(kernel.dtype),
            kernel,
            window_strides=(self.patch_size, self.patch_size),
            padding="VALID",
            dimension_numbers=("NHWC", "OIHW", "NHWC"),
        )  # [B, S/p, S/p, D]
        return out.reshape(out.shape[0], -1, out.shape[-1])


class CLIPVisionLayer(nnx.Module):
    """Pre-LN block: x + attention(LN(x)) over all tokens, then x + MLP(LN(x))."""

    def __init__(self, config: CLIPVisionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        width, eps = config.hidden_size, config.layer_norm_eps
        self.norm_attention = blocks.layer_norm(width, eps, dtype=dtype, rngs=rngs)
        self.attention = blocks.SelfAttention(
            width, config.num_heads, width // config.num_heads, dtype=dtype, rngs=rngs
        )
        self.norm_mlp = blocks.layer_norm(width, eps, dtype=dtype, rngs=rngs)
        self.mlp = blocks.FeedForward(
            width, config.intermediate_size, config.hidden_act, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.norm_attention(x))
        return x + self.mlp(self.norm_mlp(x))


class CLIPVisionTransformer(nnx.Module):
    """Normalised pixels [B, S, S, C] -> (last hidden [B, 1 + N, D], pooled [B, D])."""

    def __init__(self, config: CLIPVisionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.image_size = config.image_size
        width, eps = config.hidden_size, config.layer_norm_eps
        self.patch_embedding = PatchEmbedding(config, dtype=dtype, rngs=rngs)
        init = partitioned(blocks.normal, ("embed",))
        self.class_embedding = nnx.Param(init(rngs.params(), (width,), dtype))
        self.position_embedding = blocks.embedding(
            config.num_patches + 1, width, (None, "embed"), dtype=dtype, rngs=rngs
        )
        self.pre_norm = blocks.layer_norm(width, eps, dtype=dtype, rngs=rngs)
        self.layers = nnx.List(
            [CLIPVisionLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)]
        )
        self.post_norm = blocks.layer_norm(width, eps, dtype=dtype, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        batch, height, width = pixels.shape[:3]
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"CLIP vision tower takes {self.image_size}x{self.image_size} pixels, got "
                f"{height}x{width}; resize and crop first (evaluation.clip_score.preprocess)."
            )
        patches = self.patch_embedding(pixels)  # [B, N, D]
        cls = jnp.broadcast_to(self.class_embedding[...], (batch, 1, patches.shape[-1]))
        h = jnp.concatenate([cls.astype(patches.dtype), patches], axis=1)
        h = h + self.position_embedding(jnp.arange(h.shape[1]))[None]
        h = self.pre_norm(h)
        for layer in self.layers:
            h = layer(h)
        return h, self.post_norm(h[:, 0])


class CLIPVisionWithProjections(nnx.Module):
    """Everything of a CLIPModel but the text tower: image tower, both projections, logit scale.

    `__call__` embeds images; the text tower's pooled state is projected by `project_text`.
    """

    def __init__(
        self, config: CLIPVisionConfig, text_width: int, *, dtype=jnp.float32, rngs: nnx.Rngs
    ):
        self.vision_model = CLIPVisionTransformer(config, dtype=dtype, rngs=rngs)
        common = dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.visual_projection = blocks.dense(
            config.hidden_size, config.projection_dim, ("embed", None), **common
        )
        self.text_projection = blocks.dense(
            text_width, config.projection_dim, ("embed", None), **common
        )
        self.logit_scale = nnx.Param(jnp.zeros((), dtype))  # log of CLIP's softmax temperature

    def __call__(self, pixels: jax.Array) -> VisionOutput:
        hidden, pooled = self.vision_model(pixels)
        return VisionOutput(
            hidden=hidden, pooled=pooled, image_embeds=self.visual_projection(pooled)
        )


def project_text(params: Params, text_pooled: jax.Array) -> jax.Array:
    """The text tower's pooled EOS state [B, D_text] -> text_embeds [B, P] (`text_projection`)."""
    kernel = params["text_projection"]["kernel"]
    return jnp.matmul(text_pooled.astype(kernel.dtype), kernel)


def weight_rules() -> tuple[WeightRule, ...]:
    """CLIPModel tensor names outside the text tower -> our `CLIPVisionWithProjections` paths."""
    tower = r"vision_model\."
    layer = tower + r"encoder\.layers\.(\d+)\."
    ours = "vision_model/"
    projections = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}
    return (
        WeightRule(tower + r"embeddings\.patch_embedding\.weight", ours + "patch_embedding/kernel"),
        WeightRule(tower + r"embeddings\.class_embedding", ours + "class_embedding"),
        WeightRule(
            tower + r"embeddings\.position_embedding\.weight", ours + "position_embedding/embedding"
        ),
        *norm_rules(tower + r"pre_layrnorm", ours + "pre_norm"),  # sic: transformers' spelling
        *[
            rule
            for hf_name, target in projections.items()
            for rule in linear_rules(
                layer + rf"self_attn\.{hf_name}", ours + rf"layers/\1/attention/{target}"
            )
        ],
        *norm_rules(layer + r"layer_norm1", ours + r"layers/\1/norm_attention"),
        *norm_rules(layer + r"layer_norm2", ours + r"layers/\1/norm_mlp"),
        *linear_rules(layer + r"mlp\.fc1", ours + r"layers/\1/mlp/fc_act"),
        *linear_rules(layer + r"mlp\.fc2", ours + r"layers/\1/mlp/fc_out"),
        *norm_rules(tower + r"post_layernorm", ours + "post_norm"),
        *linear_rules(r"visual_projection", "visual_projection", bias=False),
        *linear_rules(r"text_projection", "text_projection", bias=False),
        WeightRule(r"logit_scale", "logit_scale"),
    )


IGNORED_WEIGHTS = (
    r"text_model\..*",  # the text tower: models/text_encoders/clip.py loads it
    r"vision_model\.embeddings\.position_ids",  # a buffer, not a weight
)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedVision:
    """A CLIPModel's image tower and heads: config, pure network and its params."""

    config: CLIPVisionConfig
    network: FunctionalModel  # apply(params, pixels [B, S, S, C]) -> VisionOutput
    params: Params  # vision_model, visual_projection, text_projection, logit_scale


def load_vision(path: str | os.PathLike, dtype: str = "float32") -> LoadedVision:
    """Loads the image tower and heads of a Hugging Face CLIPModel directory.

    Raises:
      FileNotFoundError: no directory, config.json or model.safetensors.
      ValueError: the checkpoint is not a full CLIPModel (e.g. a CLIPTextModel alone); the
        message names the path and what is missing.
    """
    directory = Path(path)
    if not (directory / weights.CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"CLIP checkpoint {str(directory)!r} has no {weights.CONFIG_FILE} (or is not a "
            "directory); expected a Hugging Face CLIPModel directory."
        )
    hf_config = weights.read_config(directory)
    model_type = hf_config.get("model_type")
    if model_type != "clip":
        raise ValueError(
            f"CLIP checkpoint {str(directory)!r} has config.json model_type {model_type!r}, not "
            "'clip': it lacks the vision tower, visual_projection, text_projection or the text "
            "tower. CLIP score needs a full CLIPModel checkpoint (both towers and projections)."
        )
    tensors = weights.read_tensors(directory)
    missing = [
        what
        for what, pattern in REQUIRED_TENSORS
        if not any(re.fullmatch(pattern, name) for name in tensors)
    ]
    if missing:
        raise ValueError(
            f"CLIP checkpoint {str(directory)!r} is missing {', '.join(missing)}; CLIP score "
            "needs a full CLIPModel checkpoint (both towers and projections)."
        )
    config = CLIPVisionConfig.from_hf(hf_config)
    text_width = clip.CLIPTextConfig.from_hf(hf_config).hidden_size
    network = functionalize(
        lambda rngs: CLIPVisionWithProjections(
            config, text_width, dtype=jnp.dtype(dtype), rngs=rngs
        )
    )
    params = weights.to_params(
        tensors, weight_rules(), network.abstract_params, ignored=IGNORED_WEIGHTS
    )
    return LoadedVision(config=config, network=network, params=params)
