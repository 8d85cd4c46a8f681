"""Turns a ConfigDict into the plain objects a run needs, validating everything before compiling."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

import sharding
from diffusion import schedules
from diffusion.schedules import NoiseSchedule
from errors import ConfigError
from input_pipeline import captions, pipeline
from models import registry
from models.functional import FunctionalModel, functionalize
from training import conditioning
from training.conditioning import ConditioningConfig, SampleConditions, TextBank
from training.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from training.sampling import SamplerConfig
from training.train_step import StepConfig
from training.validation import config_errors, validate_config


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything derived from the config: data, schedule, network, optimizer, sampler, mesh."""

    data: pipeline.DataConfig
    schedule: NoiseSchedule
    build_model: Callable[[nnx.Rngs], nnx.Module]
    model: FunctionalModel
    optimizer_config: OptimizerConfig
    optimizer: optax.GradientTransformation
    learning_rate_fn: optax.Schedule
    step_config: StepConfig
    sampler: SamplerConfig
    mesh: Mesh
    sharding_rules: tuple[tuple[str, str], ...] = ()  # logical axis -> mesh axis, in order
    sequence_parallel: bool = False  # residual stream split by tokens over 'tensor'
    donate_state: bool = True  # the train step reuses the input state's buffers
    flow_shift: float = 1.0
    conditioning: ConditioningConfig = ConditioningConfig()
    num_classes: int = 0
    text_encoder: Any = None  # models.text_encoders.TextEncoder when conditioning.kind = "text"
    caption_bank: TextBank | None = None  # the dataset's captions + the empty prompt (null row)
    sample_conditions: SampleConditions | None = None  # what sample grids / --mode=sample draw

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.data.image_size, self.data.image_size, self.data.channels)


def build_experiment(
    config: ml_collections.ConfigDict, devices: list[jax.Device] | None = None
) -> Experiment:
    """Validates the config and builds the run's objects.

    Every check runs first (`training.validation.validate_config`: ConfigError naming the field);
    the only computation, after them, is the frozen text encoder's one pass over the dataset's
    captions and the sampling prompts (text-conditioned runs).
    """
    devices = list(devices or jax.devices())
    validate_config(config, len(devices), jax.process_count())
    mesh_config = sharding.MeshConfig(**config.mesh)
    mesh = sharding.make_mesh(mesh_config, devices)
    sharding_rules = sharding.rules_for(mesh, mesh_config.rules)
    data = pipeline.data_config_from(config.data)
    diffusion_cfg = config.diffusion
    schedule = schedules.make_schedule(
        diffusion_cfg.schedule,
        diffusion_cfg.num_timesteps,
        diffusion_cfg.beta_start,
        diffusion_cfg.beta_end,
    )
    cond = ConditioningConfig(**config.conditioning)
    num_classes = pipeline.num_classes(data.name)
    encoder, caption_table = None, []
    if cond.kind == "text":
        if data.name in captions.CAPTIONS:  # else free text, embedded batch by batch
            caption_table = captions.caption_table(data.name)
        encoder = load_text_encoder(config.text_encoder)  # reads files; runs nothing yet
    # The null condition: the reserved class row, or the caption bank's last (empty) prompt.
    null_id = {"none": 0, "class": num_classes, "text": len(caption_table)}[cond.kind]
    with config_errors("model"):  # checked already, now with the encoder's real widths
        model_config = registry.make_model_config(
            config.model,
            image_size=data.image_size,
            channels=data.channels,
            num_classes=num_classes if cond.kind == "class" else None,
            context_dim=encoder.hidden_size if encoder else None,
            pooled_dim=encoder.pooled_size if encoder else None,
        )
    build = registry.build_model(model_config)
    optimizer_config = OptimizerConfig(**config.optimizer)
    sampler = SamplerConfig(**config.sampler)
    # All checks passed: now the encoder's one pass over the captions and the prompts.
    bank = conditioning.caption_bank(encoder, caption_table) if encoder else None
    return Experiment(
        data=data,
        schedule=schedule,
        build_model=build,
        model=functionalize(build),
        optimizer_config=optimizer_config,
        optimizer=make_optimizer(optimizer_config),
        learning_rate_fn=learning_rate_schedule(optimizer_config),
        step_config=StepConfig(
            prediction=diffusion_cfg.prediction,
            ema_decay=optimizer_config.ema_decay,
            process=diffusion_cfg.process,
            conditioning=cond.kind,
            cond_dropout=cond.dropout if cond.kind != "none" else 0.0,
            null_id=null_id,
            grad_accumulation_steps=config.training.grad_accumulation_steps,
        ),
        flow_shift=diffusion_cfg.flow_shift,
        sampler=sampler,
        mesh=mesh,
        sharding_rules=sharding_rules,
        sequence_parallel=mesh_config.sequence_parallel,
        donate_state=config.training.donate_state,
        conditioning=cond,
        num_classes=num_classes,
        text_encoder=encoder,
        caption_bank=bank,
        sample_conditions=conditioning.sample_conditions(
            cond.kind,
            per_prompt=sampler.num_samples,
            prompts=sampler.prompts,
            negative_prompt=sampler.negative_prompt,
            class_labels=sampler.class_labels,
            num_classes=num_classes,
            default_prompts=(
                captions.class_prompts(data.name) if data.name in captions.CAPTIONS else ()
            ),
            encoder=encoder,
        ),
    )


def load_text_encoder(encoder_cfg: ml_collections.ConfigDict) -> Any:
    """The frozen encoder named by `config.text_encoder` ("" path: the shipped MiniLM copy)."""
    from models import text_encoders  # noqa: PLC0415 (tokenizers etc. only when text is used)

    try:
        path = encoder_cfg.path or text_encoders.default_path(encoder_cfg.name)
        return text_encoders.load_text_encoder(encoder_cfg.name, path, encoder_cfg.max_length)
    except (ValueError, OSError) as err:  # a checkpoint that does not match the config
        message = str(err)
        if "text_encoder." not in message:
            message = f"text_encoder.path={encoder_cfg.path!r}: {message}"
        raise ConfigError(message) from err
