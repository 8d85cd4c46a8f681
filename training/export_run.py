"""`--mode=export`: the run's EMA U-Net as a diffusers StableDiffusionPipeline directory.

Restores the newest checkpoint under the workdir (or, with none, the pretrained U-Net at step 0,
as --mode=sample does), gathers the EMA params to the host of every process (they may be
sharded over all of them) and, on process 0, writes `export.path` with
training/pipeline_export.write_pipeline: the U-Net, the run's frozen VAE, CLIP text encoder and
tokenizer copied byte for byte, and a DDIMScheduler config for diffusion.* and sampler.*.
Everything that would stop the export is refused (ConfigError naming the field) before any
checkpoint is read.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils.epath import Path
from jax.experimental import multihost_utils

import paths
from errors import ConfigError
from models import registry
from models.pipeline_dir import INDEX_FILE
from models.unet import UNetConfig
from schema import fail, require
from training import checkpointing, loop, pipeline_export
from training.experiment import build_experiment
from training.run_config import RunConfig

# scheduler_config's arguments that come from sampler.* (the others from diffusion.*).
SAMPLER_FIELDS = ("spacing", "steps_offset", "set_alpha_to_one", "clip_sample")


def export_pipeline(config: RunConfig | ml_collections.ConfigDict, workdir: str) -> Path:
    """Writes the run's EMA U-Net and frozen parts to `config.export.path` as a diffusers
    StableDiffusionPipeline (`from_pretrained(path)` loads it); returns that path.

    Every process restores and gathers (the params may be FSDP-sharded over all of them);
    process 0 alone writes.

    Raises:
      ConfigError: naming the field, before any checkpoint is read: export.path unset or a
        non-empty directory; a run that is not a CLIP text-conditioned, latent (autoencoder.path)
        DDPM U-Net; diffusion / sampler settings a loaded pipeline would not sample with.
      FileNotFoundError: no checkpoint under `workdir` and no pretrained U-Net to export.
    """
    run = config if isinstance(config, RunConfig) else RunConfig.from_configdict(config)
    scheduler = check_exportable(run)
    experiment = build_experiment(run)
    manager = checkpointing.make_manager(workdir, run.max_checkpoints_to_keep)
    if manager.latest_step() is None and experiment.initial_params_fn is None:
        raise FileNotFoundError(
            f"--mode=export found no checkpoint under {paths.absolute(workdir)}/checkpoints "
            "and no pretrained U-Net (init_from / pretrained.path); train first (--mode=train) "
            "or point --workdir at a run."
        )
    state, _ = loop.init_or_restore(experiment, manager, run.seed)
    step = int(jax.device_get(state.step))
    params = host_params(state.ema_params)  # a collective: every process takes part
    del state
    out = Path(run.export.path)
    if jax.process_index() == 0:
        source_index = None
        if run.pretrained.path:
            source_index = json.loads((Path(run.pretrained.path) / INDEX_FILE).read_text())
        text = run.text_encoder
        pipeline_export.write_pipeline(
            out,
            unet_config=run.model,
            unet_params=params,
            vae_dir=run.autoencoder.path,
            text_encoder_dir=text.path,
            tokenizer_dir=text.tokenizer_path or text.path,
            scheduler=scheduler,
            source_index=source_index,
        )
        logging.info("Exported the EMA U-Net of step %d as a diffusers pipeline to %s", step, out)
    return out


def check_exportable(run: RunConfig) -> dict[str, Any]:
    """Refuses (ConfigError naming the field and value) a run --mode=export cannot write as a
    StableDiffusionPipeline that samples as configured; returns its scheduler config dict."""
    path = run.export.path
    require(bool(path), "export.path", path, "must name the pipeline directory to write.")
    out = Path(path)
    require(
        not out.exists() or (out.is_dir() and not any(out.iterdir())),
        "export.path",
        path,
        "exists and is not an empty directory; choose a new one (nothing is overwritten).",
    )
    require(
        run.conditioning.kind == "text",
        "conditioning.kind",
        run.conditioning.kind,
        "must be 'text': a StableDiffusionPipeline is prompted through CLIP.",
    )
    require(
        run.text_encoder.name == "clip",
        "text_encoder.name",
        run.text_encoder.name,
        "must be 'clip': StableDiffusionPipeline's text encoder.",
    )
    require(
        bool(run.autoencoder.path),
        "autoencoder.path",
        run.autoencoder.path,
        "must name the run's VAE: a StableDiffusionPipeline denoises latents.",
    )
    require(
        run.diffusion.process == "ddpm",
        "diffusion.process",
        run.diffusion.process,
        "must be 'ddpm': the exported pipeline's DDIMScheduler is a VP scheduler.",
    )
    if not isinstance(run.model, UNetConfig):
        name = registry.model_fields(run.model)["name"]
        fail("model.name", name, "must be 'unet': only U-Nets export to diffusers.")
    try:
        run.model.to_diffusers()  # what a UNet2DConditionModel cannot express
    except ConfigError as error:
        raise ConfigError(f"model.{error}") from error
    sampler = run.sampler
    # diffusers' StableDiffusionPipeline turns clip_sample off when it loads, and its DDIM
    # config here carries no dynamic thresholding: either would sample otherwise than configured.
    require(
        sampler.thresholding == "none",
        "sampler.thresholding",
        sampler.thresholding,
        "must be 'none': the exported pipeline samples without thresholding (diffusers' "
        "StableDiffusionPipeline turns clip_sample off when it loads).",
    )
    require(
        sampler.steps_offset == 1 or sampler.spacing != "leading",
        "sampler.steps_offset",
        sampler.steps_offset,
        "must be 1 with sampler.spacing='leading': diffusers' StableDiffusionPipeline sets "
        "steps_offset to 1 when it loads.",
    )
    diffusion = run.diffusion
    settings = dict(
        schedule=diffusion.schedule,
        num_timesteps=diffusion.num_timesteps,
        beta_start=diffusion.beta_start,
        beta_end=diffusion.beta_end,
        prediction=diffusion.prediction,
        spacing=sampler.spacing,
        steps_offset=sampler.steps_offset,
        set_alpha_to_one=sampler.set_alpha_to_one,
        clip_sample=sampler.thresholding == "static",
    )
    try:
        return pipeline_export.scheduler_config(**settings)
    except ValueError as error:  # 'name=value ...': the project field it came from
        name = str(error).split("=", 1)[0]
        section = "sampler" if name in SAMPLER_FIELDS else "diffusion"
        raise ConfigError(f"{section}.{error}") from error


def host_params(params: Any) -> Any:
    """The params as host numpy arrays, whole on every process (a collective when they are
    sharded over several processes: every process must call it)."""

    def gather(leaf: jax.Array) -> np.ndarray:
        if leaf.is_fully_addressable:
            return np.asarray(jax.device_get(leaf))
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(gather, params)
