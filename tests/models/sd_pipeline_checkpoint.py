"""A tiny random Stable Diffusion pipeline saved by diffusers' own `save_pretrained`: the
reference for the pipeline-import tests (U-Net, VAE, CLIP text model, CLIP tokenizer files and a
scheduler with Stable Diffusion 1.5's settings)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

from tests.models import sd_unet_checkpoint
from tests.models.text_encoders import checkpoints

# scheduler/scheduler_config.json of Stable Diffusion 1.5 (a PNDMScheduler there; any scheduler
# class carries the same settings).
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
    prediction_type="epsilon",
    timestep_spacing="leading",
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=[8, 16],
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=32,
)


def tiny_pipeline(
    directory: Path,
    unet_config: dict | None = None,
    *,
    tokenizer_json: bool = False,
    scheduler: dict | None = None,
) -> StableDiffusionPipeline:
    """Builds, saves (to `directory`) and returns a tiny SD 1.x-style pipeline: 32x32 images,
    16x16x4 latents, the test corpus' CLIP tokenizer, every weight perturbed. The tokenizer/
    folder holds vocab.json + merges.txt as the Stable Diffusion repositories do (transformers 5
    would write a tokenizer.json instead: `tokenizer_json=True` keeps that). `scheduler` replaces
    some of SD 1.5's scheduler settings (SD 2.x: prediction_type='v_prediction')."""
    unet_config = dict(unet_config or sd_unet_checkpoint.SD1_TINY)
    bpe_dir = checkpoints.clip_bpe_files(directory / "_bpe")
    vocab_size = len(json.loads((bpe_dir / "vocab.json").read_text()))
    text_encoder = checkpoints.clip_text_model(
        vocab_size, hidden_size=unet_config["cross_attention_dim"]
    )
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(bpe_dir), model_max_length=12)
    torch.manual_seed(2)
    vae = AutoencoderKL(**TINY_VAE).eval()
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=sd_unet_checkpoint.torch_unet(unet_config),
        scheduler=DDIMScheduler(**(SD15_SCHEDULER | (scheduler or {}))),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory, safe_serialization=True)
    if not tokenizer_json:
        (directory / "tokenizer" / "tokenizer.json").unlink()
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(bpe_dir / name, directory / "tokenizer" / name)
    shutil.rmtree(bpe_dir)
    return pipeline
