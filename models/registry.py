"""Explicit name -> backbone table; turns `config.model` into a typed config and a builder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from models.dit import DiT, DiTConfig
from models.unet import UNet, UNetConfig

ModelConfig = UNetConfig | DiTConfig

MODELS: dict[str, tuple[type[nnx.Module], type[ModelConfig]]] = {
    "unet": (UNet, UNetConfig),
    "dit": (DiT, DiTConfig),
}
# Set from the data and the conditioning, never from `config.model`.
DATA_FIELDS = (
    "image_size",
    "in_channels",
    "out_channels",
    "num_classes",
    "context_dim",
    "pooled_dim",
)


def make_model_config(
    model_cfg: Mapping[str, Any],
    *,
    image_size: int,
    channels: int,
    num_classes: int | None = None,
    context_dim: int | None = None,
    pooled_dim: int | None = None,
) -> ModelConfig:
    """A validated typed model config from `config.model` and the data shape.

    `pooled_dim` reaches only config classes that have such a field; giving one to a network
    without a pooled-embedding input is an error.
    """
    fields = dict(model_cfg)
    name = fields.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not known; allowed: {', '.join(MODELS)}")
    _, config_cls = MODELS[name]
    field_names = [f.name for f in dataclasses.fields(config_cls)]
    allowed = [f for f in field_names if f not in DATA_FIELDS]
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ValueError(
            f"model.{unknown[0]} is not a field of model.name={name!r}; allowed: "
            f"{', '.join(allowed)} (image size, channels and conditioning come from data.*)."
        )
    for key in ("channel_mult", "attention_resolutions"):
        if key in fields:
            fields[key] = tuple(fields[key])
    if "pooled_dim" in field_names:
        fields["pooled_dim"] = pooled_dim
    elif pooled_dim is not None:
        raise ValueError(
            f"model.name={name!r} takes no pooled text embedding, but pooled_dim={pooled_dim}."
        )
    config = config_cls(
        image_size=image_size,
        in_channels=channels,
        out_channels=channels,
        num_classes=num_classes,
        context_dim=context_dim,
        **fields,
    )
    config.validate()
    return config


def build_model(model_config: ModelConfig) -> Callable[[nnx.Rngs], nnx.Module]:
    """A builder `rngs -> network` for functionalize / init_params."""
    model_cls = next(cls for cls, cfg_cls in MODELS.values() if isinstance(model_config, cfg_cls))
    return lambda rngs: model_cls(model_config, rngs=rngs)
