"""Writes a diffusers-format Stable Diffusion pipeline directory from the project's parts: a
trained U-Net (our config and params), the frozen VAE, text encoder and tokenizer of the
pretrained pipeline it was fine-tuned from, and a scheduler config for its diffusion settings.
diffusers' `StableDiffusionPipeline.from_pretrained(out_dir)` loads the result, and so does
`models/pipeline_dir.read_pipeline_dir`.

The U-Net is written by models/unet_weights.py; the frozen parts are copied byte for byte (only
config, tokenizer and safetensors files: pickled .bin weights are never copied). Everything is
checked first and written to a hidden sibling directory that is renamed to `out_dir` at the end,
so a failure never leaves a half-written pipeline behind (a remote `out_dir`, "gs://...", is
written in a local temporary directory, then uploaded with model_index.json last). diffusers'
StableDiffusionPipeline rewrites two scheduler settings when it loads (steps_offset to 1,
clip_sample to false): scheduler configs where that would change the sampling are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from typing import Any

from etils.epath import Path

import paths
from diffusion import schedules
from diffusion.scheduler_settings import (
    BETA_SCHEDULES,
    DIFFUSERS_CLASSES,
    PREDICTIONS,
    SPACINGS,
    SchedulerSettings,
    from_diffusers,
)
from errors import ConfigError
from models.autoencoder_weights import CONFIG_FILE, WEIGHTS_FILE
from models.functional import Params
from models.pipeline_dir import COMPONENTS, INDEX_FILE, SCHEDULER_FILE
from models.text_encoders.clip_bpe import MERGES_FILE, VOCAB_FILE, has_bpe_files
from models.text_encoders.weights import TOKENIZER_FILE, check_checkpoint_dir
from models.unet import UNetConfig
from models.unet_weights import save_unet

PIPELINE_CLASS = "StableDiffusionPipeline"
SCHEDULER_CLASS = "DDIMScheduler"
# The library model_index.json names for each component, as diffusers' save_pretrained writes it;
# the class is the first one pipeline_dir.COMPONENTS allows (or the source pipeline's).
LIBRARIES = {
    "unet": "diffusers",
    "vae": "diffusers",
    "text_encoder": "transformers",
    "tokenizer": "transformers",
    "scheduler": "diffusers",
}
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")  # [null, null]
KEPT_FROM_SOURCE = ("text_encoder", "tokenizer")
# The frozen parts' files that are copied; anything else (pickled .bin, .msgpack, ...) is not.
COPIED_SUFFIXES = (".json", ".txt", ".safetensors", ".model")

# The project's names -> diffusers' (the inverse of diffusion/scheduler_settings.py's tables).
_BETA_SCHEDULES = {ours: theirs for theirs, ours in BETA_SCHEDULES.items()}
_PREDICTION_TYPES = {ours: theirs for theirs, ours in PREDICTIONS.items()}


def scheduler_config(
    *,
    schedule: str,
    num_timesteps: int,
    beta_start: float,
    beta_end: float,
    prediction: str,
    spacing: str,
    steps_offset: int,
    set_alpha_to_one: bool,
    clip_sample: bool,
) -> dict[str, Any]:
    """A DDIMScheduler scheduler_config.json dict for the project's diffusion / sampler settings;
    `diffusion.scheduler_settings.from_diffusers` reads the same settings back.

    Raises:
      ValueError: naming the project field and value diffusers' DDIM cannot express ('karras'
        spacing, 'edm' prediction, ...) and what is allowed.
    """
    beta_schedule = _lookup("schedule", schedule, _BETA_SCHEDULES)
    prediction_type = _lookup("prediction", prediction, _PREDICTION_TYPES)
    if spacing == "karras":
        raise ValueError(
            f"spacing='karras' cannot be written to a {SCHEDULER_CLASS} config: DDIM steps on "
            f"timesteps and has no Karras sigmas; allowed: {', '.join(SPACINGS)}"
        )
    _lookup("spacing", spacing, dict(zip(SPACINGS, SPACINGS, strict=True)))
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}={value!r} must be a number")
    schedules.validate_schedule_args(schedule, num_timesteps, beta_start, beta_end)
    if not isinstance(steps_offset, int) or isinstance(steps_offset, bool) or steps_offset < 0:
        raise ValueError(f"steps_offset={steps_offset!r} must be an integer >= 0")
    for name, value in (("set_alpha_to_one", set_alpha_to_one), ("clip_sample", clip_sample)):
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be True or False")
    return {
        "_class_name": SCHEDULER_CLASS,
        "num_train_timesteps": num_timesteps,
        "beta_schedule": beta_schedule,  # squaredcos_cap_v2 ignores the two betas
        "beta_start": float(beta_start),
        "beta_end": float(beta_end),
        "trained_betas": None,
        "rescale_betas_zero_snr": False,
        "prediction_type": prediction_type,
        "timestep_spacing": spacing,
        "steps_offset": steps_offset,
        "set_alpha_to_one": set_alpha_to_one,
        "clip_sample": clip_sample,
        "clip_sample_range": 1.0,
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
    }


def write_pipeline(
    out_dir: str | os.PathLike,
    *,
    unet_config: UNetConfig,
    unet_params: Params,
    vae_dir: str | os.PathLike,
    text_encoder_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    scheduler: Mapping[str, Any],
    source_index: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a StableDiffusionPipeline directory at `out_dir` (which must not exist or be empty).

    Args:
      unet_config, unet_params: the U-Net written to unet/ (models/unet_weights.save_unet).
      vae_dir, text_encoder_dir, tokenizer_dir: the frozen parts, copied file by file.
      scheduler: scheduler/scheduler_config.json's dict (e.g. `scheduler_config(...)`).
      source_index: the pretrained pipeline's model_index.json; its text_encoder / tokenizer
        classes are kept (default: CLIPTextModel, CLIPTokenizer).

    Returns:
      `out_dir` as a Path.

    Raises:
      FileExistsError: `out_dir` exists and is not an empty directory.
      FileNotFoundError: a part's directory or a file diffusers needs from it is missing.
      ConfigError / ValueError: a U-Net config diffusers cannot express, a scheduler config or
        source index this project cannot read, a scheduler config StableDiffusionPipeline would
        change on load (clip_sample true; steps_offset != 1 with 'leading' spacing); all before
        anything is written. Params that do not fit the config fail while writing, and leave
        nothing behind.
    """
    out = Path(out_dir)
    _check_out_dir(out)
    unet_config.to_diffusers()  # refuses what a UNet2DConditionModel cannot express
    parts = {
        "vae": _vae_files(Path(vae_dir)),
        "text_encoder": _text_encoder_files(Path(text_encoder_dir)),
        "tokenizer": _tokenizer_files(Path(tokenizer_dir)),
    }
    index = _model_index(scheduler, source_index)
    remote = paths.is_remote(out)
    parent = Path(tempfile.mkdtemp(prefix="pipeline_")) if remote else out.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        save_unet(staging / "unet", unet_config, unet_params)
        for part, files in parts.items():
            (staging / part).mkdir()
            for source in files:  # follows symlinks (Hugging Face cache snapshots)
                _copy(source, staging / part / source.name)
        (staging / "scheduler").mkdir()
        _write_json(staging / "scheduler" / SCHEDULER_FILE, dict(scheduler))
        if remote:  # the index last: a reader that finds it finds every part
            paths.mirror_tree(os.fspath(staging), out, {})
        _write_json((out if remote else staging) / INDEX_FILE, index)
        if not remote:
            try:
                os.rename(staging, out)  # replaces an empty directory, never a non-empty one
            except OSError as error:
                raise FileExistsError(
                    f"Pipeline output {str(out)!r} appeared while it was being written; not "
                    f"overwritten: {error}"
                ) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if remote:
            shutil.rmtree(parent, ignore_errors=True)
    return out


def _copy(source: Path, target: Path) -> None:
    """Copies a file byte for byte (a local one with shutil, which follows symlinks)."""
    if paths.is_remote(source):
        target.write_bytes(source.read_bytes())
    else:
        shutil.copyfile(source, target)


def _check_out_dir(out: Path) -> None:
    if out.is_dir():
        found = sorted(entry.name for entry in out.iterdir())
        if found:
            raise FileExistsError(
                f"Pipeline output {str(out)!r} already exists and is not empty (found "
                f"{found[:8]}); choose a new directory, nothing is overwritten."
            )
    elif out.exists():
        raise FileExistsError(f"Pipeline output {str(out)!r} exists and is not a directory.")


def _vae_files(directory: Path) -> list[Path]:
    """The VAE's files to copy, after checking diffusers' AutoencoderKL files are there."""
    files = _files("VAE", directory)
    names = {path.name for path in files}
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if name not in names]
    if missing:
        raise FileNotFoundError(
            f"VAE directory {str(directory)!r} is missing {', '.join(missing)}; expected a "
            f"diffusers AutoencoderKL directory with {CONFIG_FILE} and {WEIGHTS_FILE}; found "
            f"{_listing(directory)}.{_pickle_hint(directory)}"
        )
    return files


def _text_encoder_files(directory: Path) -> list[Path]:
    check_checkpoint_dir(directory, with_tokenizer=False)  # names a pickled-only directory
    return _files("Text encoder", directory)


def _tokenizer_files(directory: Path) -> list[Path]:
    files = _files("Tokenizer", directory)
    if not (directory / TOKENIZER_FILE).is_file() and not has_bpe_files(directory):
        raise FileNotFoundError(
            f"Tokenizer directory {str(directory)!r} holds neither {TOKENIZER_FILE} nor "
            f"{VOCAB_FILE} + {MERGES_FILE}; found {_listing(directory)}."
        )
    return files


def _files(part: str, directory: Path) -> list[Path]:
    """The directory's files that are copied (top level, by suffix)."""
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{part} directory {str(directory)!r} does not exist (or is not a directory)."
        )
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and path.name.endswith(COPIED_SUFFIXES)
    )


def _listing(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


def _pickle_hint(directory: Path) -> str:
    if any(name.endswith(".bin") for name in _listing(directory)):
        return " Pickled .bin weights are not copied; convert them to safetensors."
    return ""


def _model_index(
    scheduler: Mapping[str, Any], source_index: Mapping[str, Any] | None
) -> dict[str, Any]:
    """model_index.json: diffusers' layout, the scheduler's class, the source's text parts."""
    if not isinstance(scheduler, Mapping):
        raise ValueError(f"scheduler must be a scheduler_config.json dict, not {type(scheduler)}")
    _check_loads_as_written(from_diffusers(scheduler))
    scheduler_class = scheduler.get("_class_name")
    if not isinstance(scheduler_class, str) or not scheduler_class.endswith("Scheduler"):
        raise ValueError(
            f"scheduler config _class_name={scheduler_class!r} must name a diffusers scheduler "
            f"class (e.g. {SCHEDULER_CLASS!r})."
        )
    index: dict[str, Any] = {"_class_name": PIPELINE_CLASS}
    for component, classes in COMPONENTS.items():
        name = scheduler_class if classes is None else classes[0]
        index[component] = [LIBRARIES[component], name]
    for component in KEPT_FROM_SOURCE if source_index is not None else ():
        entry = source_index.get(component)
        classes = COMPONENTS[component]
        if not isinstance(entry, list | tuple) or len(entry) != 2 or entry[1] not in classes:
            raise ConfigError(
                f"source_index {component}={entry!r} is not a supported [library, class] pair; "
                f"supported classes: {', '.join(classes)}."
            )
        index[component] = list(entry)
    index |= {component: [None, None] for component in UNUSED_COMPONENTS}
    index["requires_safety_checker"] = False
    return index


def _check_loads_as_written(settings: SchedulerSettings) -> None:
    """Refuses the settings diffusers' StableDiffusionPipeline changes when it loads them (its
    __init__ sets steps_offset to 1 and a true clip_sample to False) where that would change
    the sampling: steps_offset moves 'leading' timesteps only."""
    cls = DIFFUSERS_CLASSES.get(settings.sampler or "")
    clip = cls.clip_sample if settings.clip_sample is None and cls else settings.clip_sample
    if clip:
        raise ValueError(
            "scheduler config clip_sample=true (stated or the class default): diffusers' "
            "StableDiffusionPipeline sets it to false when it loads the pipeline, which would "
            "sample otherwise than configured; write clip_sample=false."
        )
    if settings.steps_offset != 1 and settings.spacing not in ("linspace", "trailing"):
        raise ValueError(
            f"scheduler config steps_offset={settings.steps_offset} with timestep_spacing="
            f"{settings.spacing!r}: diffusers' StableDiffusionPipeline sets steps_offset to 1 when "
            "it loads the pipeline, which moves every 'leading' timestep; write steps_offset=1, "
            "or a 'trailing' / 'linspace' spacing (they ignore it)."
        )


def _lookup(field: str, value: Any, table: Mapping[str, str]) -> str:
    if not isinstance(value, str) or value not in table:
        raise ValueError(
            f"{field}={value!r} has no {SCHEDULER_CLASS} equivalent; allowed: {', '.join(table)}"
        )
    return table[value]


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
