"""Architecture-only stand-ins for the weight directories a config names, for --mode=compile.

Compiling reads a pretrained component's config files only, never its weights (the experiment
is built with `shape_only_weights`). Sizing a Stable Diffusion fine-tune or a latent DiT for a
slice should not need the gigabytes first, so when `pretrained.path`, `autoencoder.path` or
`text_encoder.path` names a directory that is not there and its name contains one of the
architectures below (the Hugging Face repository names people keep as folder names), the
directory is written with just that architecture's config files and the path pointed at it.
The figures are the published config.json values of those repositories.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import ml_collections
from etils import epath

from errors import ConfigError

# CLIPTextModel config.json: openai/clip-vit-base-patch32 (text tower) and
# openai/clip-vit-large-patch14 (Stable Diffusion 1.x's text encoder).
_CLIP_TEXT = {
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "num_hidden_layers": 12,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}
CLIP_B32_TEXT = {
    **_CLIP_TEXT,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_attention_heads": 8,
}
CLIP_L14_TEXT = {
    **_CLIP_TEXT,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
}
# Stable Diffusion's KL-f8 autoencoder (vae/config.json of SD 1.x, stabilityai/sd-vae-ft-ema).
SD_VAE = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# Stable Diffusion 1.5's unet/config.json (860M parameters, 64x64x4 latents).
SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
    "act_fn": "silu",
}
# Stable Diffusion 1.5's scheduler/scheduler_config.json (a PNDMScheduler).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def _write_json(directory: epath.Path, name: str, value: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps(value, indent=1))


def _sd15_pipeline(directory: epath.Path) -> None:
    _write_json(
        directory,
        "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "PNDMScheduler"],
        },
    )
    _write_json(directory / "unet", "config.json", SD15_UNET)
    _write_json(directory / "vae", "config.json", SD_VAE)
    _write_json(directory / "text_encoder", "config.json", CLIP_L14_TEXT)
    _write_json(directory / "tokenizer", "tokenizer_config.json", {"model_max_length": 77})
    _write_json(directory / "scheduler", "scheduler_config.json", SD15_SCHEDULER)


def _digits_vae(directory: epath.Path) -> None:
    """What a configs/digits_vae.py run exports (its typed model config, as diffusers writes it)."""
    from configs import digits_vae  # noqa: PLC0415
    from training.run_config import RunConfig  # noqa: PLC0415

    model = RunConfig.from_configdict(digits_vae.get_config(), 1, 1).model
    _write_json(directory, "config.json", model.to_diffusers())


# Name fragment -> (which path fields it may stand in for, how its directory is written).
KNOWN: dict[str, tuple[tuple[str, ...], Callable[[epath.Path], None]]] = {
    "stable-diffusion-v1-5": (
        ("pretrained.path",),
        _sd15_pipeline,
    ),
    "clip-vit-base-patch32": (
        ("text_encoder.path",),
        lambda d: _write_json(d, "config.json", CLIP_B32_TEXT),
    ),
    "clip-vit-large-patch14": (
        ("text_encoder.path",),
        lambda d: _write_json(d, "config.json", CLIP_L14_TEXT),
    ),
    "sd-vae": (("autoencoder.path",), lambda d: _write_json(d, "config.json", SD_VAE)),
    "digits_vae": (("autoencoder.path",), _digits_vae),
}
FIELDS = ("pretrained.path", "autoencoder.path", "text_encoder.path")


def substitute(
    config: ml_collections.ConfigDict, directory: str
) -> tuple[ml_collections.ConfigDict, dict[str, str]]:
    """`config` with every missing weight directory replaced by its stand-in under `directory`,
    and {field: what it stood in for}; ConfigError naming the field when none is known."""
    config = ml_collections.ConfigDict(config.to_dict())
    replaced: dict[str, str] = {}
    for dotted in FIELDS:
        section, name = dotted.split(".")
        path = config.get(section, {}).get(name, "")
        if not path or epath.Path(path).exists():
            continue
        known = [key for key, (fields, _) in KNOWN.items() if key in path and dotted in fields]
        if not known:
            allowed = [key for key, (fields, _) in KNOWN.items() if dotted in fields]
            raise ConfigError(
                f"{dotted}={path!r} does not exist. --mode=compile reads only its config files: "
                f"point it at a directory holding them (no weights needed), or name it after a "
                f"known architecture ({', '.join(allowed)})."
            )
        target = epath.Path(directory) / known[0]
        KNOWN[known[0]][1](target)
        config[section][name] = str(target)
        if dotted == "text_encoder.path" and config.text_encoder.get("tokenizer_path"):
            config.text_encoder.tokenizer_path = ""
        replaced[dotted] = path
    return config, replaced
