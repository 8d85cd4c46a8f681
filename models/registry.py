"""Explicit name -> backbone table; turns `config.model` into a typed config and a builder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

import schema
from errors import ConfigError
from models.autoencoder import AutoencoderConfig, AutoencoderKL
from models.dit import DiT, DiTConfig
from models.unet import UNet, UNetConfig

ModelConfig = UNetConfig | DiTConfig | AutoencoderConfig

MODELS: dict[str, tuple[type[nnx.Module], type[ModelConfig]]] = {
    "unet": (UNet, UNetConfig),
    "dit": (DiT, DiTConfig),
    # Trained with the reconstruction + KL loss (training/autoencoder_step.py), not diffusion.
    "autoencoder": (AutoencoderKL, AutoencoderConfig),
}
# Set from the data and the conditioning, never from `config.model`.
DATA_FIELDS = (
    "image_size",
    "sample_size",
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
    input_channels: int | None = None,
    num_classes: int | None = None,
    context_dim: int | None = None,
    pooled_dim: int | None = None,
) -> ModelConfig:
    """The typed, checked config of `config.model` (its `name` picks the backbone) for the data
    shape and conditioning (`input_channels`: what the network reads, when more than `channels`,
    e.g. an inpainting U-Net's mask and masked image); ConfigError naming `model.<field>`."""
    if not isinstance(model_cfg, schema.SECTION_TYPES):
        schema.fail("model", model_cfg, "must be a config section (a ConfigDict or dict).")
    fields = dict(model_cfg)
    name = fields.pop("name", "unet")  # a missing key takes its default, as everywhere
    schema.one_of("model.name", name, MODELS)
    _, config_cls = MODELS[name]
    fixed = {
        "image_size": image_size,
        "sample_size": image_size,
        "in_channels": channels if input_channels is None else input_channels,
        "out_channels": channels,
        "num_classes": num_classes,
        "context_dim": context_dim,
        "pooled_dim": pooled_dim,
    }
    field_names = {f.name for f in schema.user_fields(config_cls)}
    if pooled_dim is not None and "pooled_dim" not in field_names:
        raise ConfigError(f"model.name={name!r} takes no pooled text embedding.")
    fixed = {key: value for key, value in fixed.items() if key in field_names}
    return schema.build(config_cls, fields, "model", fixed=fixed)


def model_fields(model_config: ModelConfig) -> dict[str, Any]:
    """The `config.model` fields of a typed model config (name included)."""
    name = next(n for n, (_, cls) in MODELS.items() if isinstance(model_config, cls))
    return {"name": name, **schema.to_dict(model_config, DATA_FIELDS)}


def build_model(model_config: ModelConfig) -> Callable[[nnx.Rngs], nnx.Module]:
    """A builder `rngs -> network` for functionalize / init_params."""
    model_cls = next(cls for cls, cfg_cls in MODELS.values() if isinstance(model_config, cfg_cls))
    return lambda rngs: model_cls(model_config, rngs=rngs)
