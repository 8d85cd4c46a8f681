"""A pretrained Stable Diffusion 1.x / 2.x pipeline directory as a run's starting point.

`config.pretrained.path` names a diffusers-format pipeline (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/). Before any section is built, `apply` writes what the
pipeline fixes into the config: the U-Net's architecture (model.*), the VAE (autoencoder.path),
CLIP and its tokenizer (text_encoder.*, with SD's conventions: no pooled input, padding attended),
text conditioning, the image size, the noise schedule and parameterisation (diffusion.*) and, by
default, the scheduler's sampling settings for sampler.name (sampler.*). Compute settings
(model.dtype, remat, attention and conv kernels) stay as configured.

`config.init_from` (a pipeline directory or its unet/ folder) names the U-Net weights a run
starts from when it has no checkpoint yet; it defaults to the pretrained pipeline's. Weights are
read only when a fresh state is created (never on resume), straight into their shardings.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from etils.epath import Path

import paths
from errors import ConfigError
from schema import field, require

# model.* fields that say how the network computes, not what it is: kept from the config.
COMPUTE_FIELDS = ("dtype", "remat", "attention_impl", "conv_impl")


@dataclasses.dataclass(frozen=True)
class PretrainedConfig:
    """`config.pretrained`: a diffusers Stable Diffusion pipeline the run is built from."""

    path: str = field(
        "",
        "A diffusers Stable Diffusion 1.x / 2.x pipeline directory (model_index.json, unet/, "
        "vae/, text_encoder/, tokenizer/, scheduler/): sets model.*, autoencoder.path, "
        "text_encoder.*, conditioning.kind, data.image_size / channels and diffusion.* from it; "
        "its U-Net is the starting point (see init_from). '' = none.",
    )
    scheduler_settings: bool = field(
        True,
        "Take sampler.spacing / steps_offset / set_alpha_to_one / thresholding from "
        "scheduler/scheduler_config.json (as diffusers' from_config gives them to the scheduler "
        "matching sampler.name); False keeps sampler.* as configured.",
    )
    image_size: int = field(
        0,
        "Pixels per side to train and sample at (a multiple of the VAE factor x 2^(levels-1)); "
        "0 = the U-Net's sample_size x the VAE's factor (SD 1.5: 512, SD 2.1: 768).",
    )

    def validate(self) -> None:
        require(self.image_size >= 0, "pretrained.image_size", self.image_size, "must be >= 0.")


def apply(pretrained: PretrainedConfig, values: Mapping[str, Any]) -> dict[str, Any]:
    """The config's sections (plain dicts) with everything the pipeline fixes written in."""
    from diffusion import scheduler_settings  # noqa: PLC0415
    from models import registry  # noqa: PLC0415
    from models.autoencoder import AutoencoderConfig  # noqa: PLC0415
    from models.pipeline_dir import read_pipeline_dir  # noqa: PLC0415
    from models.unet_config import UNetConfig  # noqa: PLC0415

    pipe = read_pipeline_dir(pretrained.path)
    unet = _parse(pipe.unet, UNetConfig.from_diffusers)
    vae = _parse(pipe.vae, AutoencoderConfig.from_diffusers)
    try:
        settings = scheduler_settings.from_diffusers(pipe.scheduler_config())
    except ValueError as error:
        raise ConfigError(f"{str(pipe.root / 'scheduler')!r}: {error}") from error
    factor = vae.downsampling_factor
    size = pretrained.image_size or unet.image_size * factor
    halvings = 2 ** (len(unet.channel_mult) - 1)
    require(
        size % (factor * halvings) == 0,
        "pretrained.image_size",
        pretrained.image_size,
        f"must be a multiple of {factor * halvings} (the VAE's factor {factor} x the U-Net's "
        f"{halvings} halvings).",
    )
    config = {name: _plain(section) for name, section in values.items()}
    model = config.get("model", {})
    loaded = registry.model_fields(unet)
    # Attention sits at the same levels whatever the size (resolutions are feature-map sides).
    levels = [int(np.log2(unet.image_size // side)) for side in unet.attention_resolutions]
    loaded["attention_resolutions"] = tuple((size // factor) // 2**level for level in levels)
    loaded.update({name: model[name] for name in COMPUTE_FIELDS if name in model})
    config["model"] = loaded
    text = pipe.text_encoder
    overrides: dict[str, Any] = {
        "data.image_size": size,
        "data.channels": vae.in_channels,
        "autoencoder.path": str(pipe.vae),
        "conditioning.kind": "text",
        "text_encoder.name": "clip",
        "text_encoder.path": str(text),
        "text_encoder.tokenizer_path": str(pipe.tokenizer),
        "text_encoder.max_length": pipe.tokenizer_max_length(),
        "text_encoder.use_pooled": False,
        "text_encoder.attend_padding": True,
        **settings.diffusion_overrides(),
    }
    if pretrained.scheduler_settings:
        sampler_name = config.get("sampler", {}).get("name", "ddim")
        try:
            overrides |= settings.sampler_overrides(sampler_name)
        except ValueError as error:
            raise ConfigError(f"sampler.name={sampler_name!r}: {error}") from error
    for dotted, value in overrides.items():
        section, name = dotted.split(".")
        config.setdefault(section, {})[name] = value
    return config


def extra_input_channels(pretrained: PretrainedConfig) -> int:
    """Input channels the pipeline's U-Net takes beside the latents (5 for SD's 9-channel
    inpainting U-Net: the mask and the masked image's latents; else 0)."""
    if not pretrained.path:
        return 0
    config = json.loads((Path(pretrained.path) / "unet" / "config.json").read_text())
    return int(config.get("in_channels", 4)) - int(config.get("out_channels", 4))


def unet_directory(path: str) -> Path:
    """A pipeline directory's unet/ folder, or `path` itself when it is a U-Net folder."""
    directory = Path(path)
    return directory / "unet" if (directory / "model_index.json").is_file() else directory


def initial_params_fn(
    init_from: str, pretrained_path: str, model_config: Any, field_name: str = "init_from"
) -> Callable[[], dict] | None:
    """A loader of the U-Net weights a fresh run starts from (None: random init). It reads
    nothing until called; the weights must fit `model_config` exactly."""
    source = init_from or pretrained_path
    if not source:
        return None
    name = field_name if init_from else "pretrained.path"
    directory = unet_directory(source)
    from models import unet_weights  # noqa: PLC0415

    if not (directory / unet_weights.WEIGHTS_FILE).is_file():
        raise ConfigError(
            f"{name}={source!r} has no {unet_weights.WEIGHTS_FILE} in {str(directory)!r}: expected "
            "a diffusers pipeline directory or its unet/ folder."
        )

    def load() -> dict:
        try:
            tensors = paths.read_safetensors(directory / unet_weights.WEIGHTS_FILE)
            return unet_weights.params_from_diffusers(tensors, model_config)
        except ValueError as error:
            raise ConfigError(
                f"{name}={source!r}: its U-Net does not fit model.*: {error}"
            ) from error

    return load


def _parse(directory: Path, from_diffusers: Callable[[dict], Any]) -> Any:
    """A component's config.json through its from_diffusers, errors naming the file."""
    path = directory / "config.json"
    try:
        return from_diffusers(json.loads(path.read_text()))
    except (OSError, ValueError) as error:  # ConfigError is a ValueError
        raise ConfigError(f"pretrained.path: {str(path)!r}: {error}") from error


def _plain(section: Any) -> Any:
    """A ConfigDict section as a plain dict (run-level scalars unchanged)."""
    if hasattr(section, "to_dict"):
        return section.to_dict()
    return dict(section) if isinstance(section, Mapping) else section
