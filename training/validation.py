"""Checks a whole run config before anything is built, initialised or compiled.

`validate_config` reads nothing but the config (and, for text runs, whether the encoder's files
are there); every failure is an `errors.ConfigError` whose message names the dotted field, its
value and what is allowed. The pure validators of `diffusion/`, `models/` and `sharding.py` raise
ValueError; they are re-raised here as ConfigError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import tempfile
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections

import sharding
from diffusion import forward, schedules
from errors import ConfigError
from input_pipeline import captions, pipeline
from models import registry
from training import conditioning
from training.conditioning import ConditioningConfig
from training.optimizer import OptimizerConfig
from training.sampling import SamplerConfig

PROCESSES = ("ddpm", "flow")
NONFINITE_POLICIES = ("skip", "stop")  # training.nonfinite_policy (see training/loop.py)
# Sections without a typed dataclass: field -> type. Other keys in them are left alone.
RUN_FIELDS = {
    "seed": int,
    "num_train_steps": int,
    "batch_size": int,
    "log_every_steps": int,
    "checkpoint_every_steps": int,
    "sample_every_steps": int,
    "max_checkpoints_to_keep": int,
    "compilation_cache_dir": str,
}
DIFFUSION_FIELDS = {
    "process": str,
    "flow_shift": float,
    "schedule": str,
    "num_timesteps": int,
    "beta_start": float,
    "beta_end": float,
    "prediction": str,
}
TEXT_ENCODER_FIELDS = {"name": str, "path": str, "max_length": int}
TRAINING_FIELDS = {"grad_accumulation_steps": int, "nonfinite_policy": str, "donate_state": bool}
# Upper bounds on sizes that are allocated whole on the host before training starts (the
# schedule's arrays, the sampling batch): far above any published setting, well below memory.
MAX_TIMESTEPS = 100_000
MAX_SAMPLES = 65_536  # images per prompt / class in one sampling batch
# Any positive width passes the model's checks; the real one is known once the encoder loads.
_PLACEHOLDER_TEXT_WIDTH = 1


@contextlib.contextmanager
def config_errors(field: str = "") -> Iterator[None]:
    """Re-raises a validator's ValueError as ConfigError, prefixed by `field` if it lacks it."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as err:
        message = str(err)
        if field and field not in message:
            message = f"{field}: {message}"
        raise ConfigError(message) from err


def _describe(hint: Any) -> str:
    """'int', 'int or None', 'tuple of int', ... for messages."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is tuple:
        return f"tuple of {_describe(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "None"
    if hint is float:
        return "finite float"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint` (ints pass as floats; bools are not ints)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple | list) and all(_matches(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        )
    return not isinstance(hint, type) or isinstance(value, hint)


def check_type(field: str, value: Any, hint: Any) -> None:
    """Raises ConfigError unless `value` fits `hint`."""
    if not _matches(value, hint):
        raise ConfigError(
            f"{field}={value!r} ({type(value).__name__}) has the wrong type; expected "
            f"{_describe(hint)}."
        )


def section(config: Any, name: str) -> dict[str, Any]:
    """The fields of `config.<name>` as a dict (ConfigError if missing or not a section)."""
    if not isinstance(config, Mapping | ml_collections.ConfigDict) or name not in config:
        raise ConfigError(f"{name} is missing; every config needs the {name}.* section.")
    value = config[name]
    if not isinstance(value, Mapping | ml_collections.ConfigDict):
        raise ConfigError(f"{name}={value!r} must be a config section (a ConfigDict).")
    return dict(value)


def check_fields(values: Mapping[str, Any], prefix: str, types_: Mapping[str, type]) -> None:
    """Every field of `types_` is present in `values` with that type."""
    for name, hint in types_.items():
        field = f"{prefix}.{name}" if prefix else name
        if name not in values:
            raise ConfigError(f"{field} is missing; expected {_describe(hint)}.")
        check_type(field, values[name], hint)


def typed(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """`cls(**values)` after checking the field names and each value's type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"{prefix}.{unknown[0]} is not a field of {prefix}; allowed: {', '.join(names)}."
        )
    for name, value in values.items():
        check_type(f"{prefix}.{name}", value, hints[name])
    return cls(**values)


def validate_mesh(config: Any, num_devices: int) -> dict[str, int]:
    """The mesh axis sizes after checking `mesh.*` against the device count."""
    mesh = typed(sharding.MeshConfig, section(config, "mesh"), "mesh")
    for axis in sharding.MESH_AXES:
        size = getattr(mesh, axis)
        if size > num_devices:
            raise ConfigError(
                f"mesh.{axis}={size} exceeds the {num_devices} devices; allowed: -1 (the devices "
                f"left over) or a size whose product with the other axes is {num_devices}."
            )
    given = ", ".join(f"mesh.{axis}={getattr(mesh, axis)}" for axis in sharding.MESH_AXES)
    try:
        sizes = mesh.axis_sizes(num_devices)
    except ValueError as err:  # sharding's message names the sizes; put the fields first
        message = str(err).removeprefix("mesh: ")
        raise ConfigError(message if "mesh." in message else f"{given}: {message}") from err
    with config_errors("mesh.rules"):
        sharding.parse_rules(mesh.rules)
    return sizes


def validate_run(config: Any, num_batch_shards: int, process_count: int) -> None:
    """Checks the run-level fields (lengths, cadences, batch divisibility)."""
    check_fields(config, "", RUN_FIELDS)
    check_fields(section(config, "training"), "training", TRAINING_FIELDS)
    if not 0 <= config.seed < 2**63:
        raise ConfigError(f"seed={config.seed} must be in [0, 2**63).")
    if config.num_train_steps < 0:
        raise ConfigError(f"num_train_steps={config.num_train_steps} must be >= 0.")
    for field in ("log_every_steps", "checkpoint_every_steps", "max_checkpoints_to_keep"):
        if config[field] < 1:
            raise ConfigError(f"{field}={config[field]} must be >= 1.")
    if config.sample_every_steps < 0:
        raise ConfigError(f"sample_every_steps={config.sample_every_steps} must be >= 0 (0: off).")
    if config.batch_size < 1 or config.batch_size % num_batch_shards:
        raise ConfigError(
            f"batch_size={config.batch_size} must be a positive multiple of the "
            f"{num_batch_shards} devices it is split over (mesh data x fsdp)."
        )
    if config.batch_size % process_count:
        raise ConfigError(
            f"batch_size={config.batch_size} must divide evenly over {process_count} processes."
        )
    steps = config.training.grad_accumulation_steps
    if steps < 1:
        raise ConfigError(f"training.grad_accumulation_steps={steps!r} must be an integer >= 1.")
    if config.batch_size % (num_batch_shards * steps):
        raise ConfigError(
            f"training.grad_accumulation_steps={steps} must divide the per-device batch: "
            f"batch_size={config.batch_size} is not a multiple of {num_batch_shards} batch "
            f"shards (mesh data x fsdp) x {steps} micro-batches = {num_batch_shards * steps}."
        )
    policy = config.training.nonfinite_policy
    if policy not in NONFINITE_POLICIES:
        raise ConfigError(
            f"training.nonfinite_policy={policy!r} is not known; allowed: "
            f"{', '.join(NONFINITE_POLICIES)}"
        )


def validate_diffusion(config: Any) -> dict[str, Any]:
    """`diffusion.*`: process, schedule arguments, prediction, flow shift."""
    cfg = section(config, "diffusion")
    check_fields(cfg, "diffusion", DIFFUSION_FIELDS)
    if cfg["process"] not in PROCESSES:
        raise ConfigError(
            f"diffusion.process={cfg['process']!r} is not known; allowed: {', '.join(PROCESSES)}"
        )
    with config_errors("diffusion"):
        schedules.validate_schedule_args(
            cfg["schedule"], cfg["num_timesteps"], cfg["beta_start"], cfg["beta_end"]
        )
        forward.validate_prediction(cfg["prediction"])
    if cfg["num_timesteps"] > MAX_TIMESTEPS:
        raise ConfigError(
            f"diffusion.num_timesteps={cfg['num_timesteps']} is above the {MAX_TIMESTEPS} noise "
            "levels allowed (the schedule is built whole on the host)."
        )
    if cfg["flow_shift"] <= 0:
        raise ConfigError(f"diffusion.flow_shift={cfg['flow_shift']} must be > 0.")
    return cfg


def validate_text_encoder(config: Any, kind: str, data: pipeline.DataConfig) -> None:
    """`text_encoder.*`: a known encoder exactly when conditioning on text, and its files."""
    cfg = section(config, "text_encoder")
    check_fields(cfg, "text_encoder", TEXT_ENCODER_FIELDS)
    name = cfg["name"]
    if kind != "text" and name == "none":
        return
    from models import text_encoders  # noqa: PLC0415 (tokenizers etc. only when text is used)
    from models.text_encoders import weights  # noqa: PLC0415

    allowed = ", ".join(e for e in text_encoders.ENCODERS if e != "none")
    if name not in text_encoders.ENCODERS:
        raise ConfigError(f"text_encoder.name={name!r} is not known; allowed: none, {allowed}")
    if kind != "text":
        raise ConfigError(
            f"text_encoder.name={name!r} needs conditioning.kind='text' (got {kind!r})."
        )
    if name == "none":
        raise ConfigError(
            f"text_encoder.name='none' cannot encode conditioning.kind='text'; allowed: {allowed}"
        )
    if cfg["max_length"] < 1:
        raise ConfigError(f"text_encoder.max_length={cfg['max_length']} must be >= 1.")
    if data.name not in captions.CAPTIONS and not data.text_key:
        raise ConfigError(
            f"conditioning.kind='text' needs captions: data.name={data.name!r} has none; "
            f"use {', '.join(captions.CAPTIONS)}, or data.name='tfds' with data.text_key."
        )
    path = cfg["path"]
    try:
        weights.check_checkpoint_dir(path or text_encoders.default_path(name))
    except (ValueError, OSError) as err:
        message = str(err)
        if "text_encoder.path" not in message:
            message = f"text_encoder.path={path!r}: {message}"
        raise ConfigError(message) from err


def validate_model(
    config: Any, data: pipeline.DataConfig, num_classes: int, kind: str
) -> registry.ModelConfig:
    """`model.*` against the data shape (image size vs U-Net depth / DiT patch) and conditioning."""
    cfg = section(config, "model")
    name = cfg.get("name")
    if not isinstance(name, str) or name not in registry.MODELS:
        allowed = ", ".join(registry.MODELS)
        raise ConfigError(f"model.name={name!r} is not known; allowed: {allowed}")
    hints = typing.get_type_hints(registry.MODELS[name][1])
    for key, value in cfg.items():
        if key in hints and key not in registry.DATA_FIELDS:
            check_type(f"model.{key}", value, hints[key])
    text_width = _PLACEHOLDER_TEXT_WIDTH if kind == "text" else None
    with config_errors("model"):
        model_config = registry.make_model_config(
            cfg,
            image_size=data.image_size,
            channels=data.channels,
            num_classes=num_classes if kind == "class" else None,
            context_dim=text_width,
            pooled_dim=text_width,
        )
    validate_attention_impl(model_config)
    if getattr(model_config, "learn_sigma", False):
        raise ConfigError(
            "model.learn_sigma=True doubles the output channels for a learned variance, which "
            "the training loss does not use; set model.learn_sigma=False."
        )
    return model_config


def validate_attention_impl(model_config: registry.ModelConfig) -> None:
    """model.attention_impl='cudnn' (known to the model's config) against the dtype and backend:
    cuDNN's fused attention takes bf16 / fp16 only and runs only on a GPU."""
    if model_config.attention_impl != "cudnn":
        return
    if model_config.dtype != "bfloat16":
        raise ConfigError(
            f"model.attention_impl='cudnn' needs model.dtype='bfloat16' (cuDNN's fused attention "
            f"takes bf16 / fp16), got model.dtype={model_config.dtype!r}; with float32 allowed: "
            "None, 'xla'."
        )
    backend = jax.default_backend()
    if backend != "gpu":
        raise ConfigError(
            f"model.attention_impl='cudnn' needs a GPU, but JAX's backend is {backend!r}; "
            "allowed here: None, 'xla'."
        )


def validate_sampler(
    config: Any, diffusion_cfg: Mapping[str, Any], kind: str, num_classes: int, dataset: str
) -> SamplerConfig:
    """`sampler.*` against the process, the number of noise levels and the conditioning."""
    sampler = typed(SamplerConfig, section(config, "sampler"), "sampler")
    with config_errors("sampler"):
        sampler.validate(
            diffusion_cfg["num_timesteps"],
            process=diffusion_cfg["process"],
            flow_shift=diffusion_cfg["flow_shift"],
        )
        if kind == "class":
            conditioning.parse_class_labels(sampler.class_labels, num_classes)
    if sampler.num_samples > MAX_SAMPLES:
        raise ConfigError(
            f"sampler.num_samples={sampler.num_samples} is above the {MAX_SAMPLES} images per "
            "prompt (one sampling batch) allowed."
        )
    if kind == "text" and dataset not in captions.CAPTIONS:
        if not conditioning.parse_prompts(sampler.prompts):
            raise ConfigError(
                f"sampler.prompts={sampler.prompts!r} is empty and data.name={dataset!r} has no "
                "captions to default to; give ';'-separated prompts."
            )
    return sampler


def validate_config(
    config: ml_collections.ConfigDict,
    num_devices: int | None = None,
    process_count: int | None = None,
) -> None:
    """Checks every field of a run config; raises ConfigError naming the first bad one.

    Args:
      config: the whole run config (configs/default.py's fields).
      num_devices: devices the mesh spans (default: all of jax.devices()).
      process_count: processes the global batch is split over (default: jax.process_count()).
    """
    num_devices = jax.device_count() if num_devices is None else num_devices
    process_count = jax.process_count() if process_count is None else process_count
    sizes = validate_mesh(config, num_devices)
    validate_run(config, math.prod(sizes[axis] for axis in sharding.BATCH_AXES), process_count)
    data = typed(pipeline.DataConfig, section(config, "data"), "data")
    with config_errors("data"):
        pipeline.validate_data_config(data)
    diffusion_cfg = validate_diffusion(config)
    cond = typed(ConditioningConfig, section(config, "conditioning"), "conditioning")
    with config_errors("conditioning"):
        cond.validate()
    num_classes = pipeline.num_classes(data.name)
    if cond.kind == "class" and num_classes == 0:
        raise ConfigError(
            f"conditioning.kind='class' needs labels; data.name={data.name!r} has none."
        )
    validate_text_encoder(config, cond.kind, data)
    validate_model(config, data, num_classes, cond.kind)
    optimizer = typed(OptimizerConfig, section(config, "optimizer"), "optimizer")
    with config_errors("optimizer"):
        optimizer.validate()
    validate_sampler(config, diffusion_cfg, cond.kind, num_classes, data.name)


def validate_workdir(workdir: str | os.PathLike) -> None:
    """Creates `workdir` if it is missing and checks that this process can write into it.

    Remote paths ("gs://...") are left to Orbax and the metric writers.
    """
    path = os.fspath(workdir) if isinstance(workdir, str | os.PathLike) else None
    if not path or not path.strip():
        raise ConfigError(f"--workdir={workdir!r} must name a directory.")
    if "://" in path:
        return
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(
            f"--workdir={path!r} is not a writable directory ({err.strerror or err}); allowed: "
            "a directory this process can create and write to."
        ) from err
