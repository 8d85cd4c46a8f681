"""Turns a ConfigDict into the plain objects a run needs, validating everything before compiling."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

import sharding
from diffusion import flow, forward, schedules
from diffusion.schedules import NoiseSchedule
from input_pipeline import pipeline
from models import registry
from models.functional import FunctionalModel, functionalize
from training.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from training.sampling import SamplerConfig
from training.train_step import StepConfig

PROCESSES = ("ddpm", "flow")


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
    flow_shift: float = 1.0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.data.image_size, self.data.image_size, self.data.channels)


def validate_run(config: ml_collections.ConfigDict, num_batch_shards: int, process_count: int):
    """Checks the run-level fields (lengths, cadences, batch divisibility)."""
    if config.num_train_steps < 0:
        raise ValueError(f"num_train_steps={config.num_train_steps} must be >= 0.")
    for field in ("log_every_steps", "checkpoint_every_steps", "max_checkpoints_to_keep"):
        if config[field] < 1:
            raise ValueError(f"{field}={config[field]} must be >= 1.")
    if config.sample_every_steps < 0:
        raise ValueError(f"sample_every_steps={config.sample_every_steps} must be >= 0 (0: off).")
    if config.batch_size < 1 or config.batch_size % num_batch_shards:
        raise ValueError(
            f"batch_size={config.batch_size} must be a positive multiple of the "
            f"{num_batch_shards} devices it is split over (mesh data x fsdp)."
        )
    if config.batch_size % process_count:
        raise ValueError(
            f"batch_size={config.batch_size} must divide evenly over {process_count} processes."
        )


def build_experiment(
    config: ml_collections.ConfigDict, devices: list[jax.Device] | None = None
) -> Experiment:
    """Validates the config and builds the run's objects; nothing is compiled or allocated here."""
    devices = list(devices or jax.devices())
    mesh = sharding.make_mesh(sharding.MeshConfig(**config.mesh), devices)
    validate_run(config, sharding.num_batch_shards(mesh), jax.process_count())
    data = pipeline.data_config_from(config.data)
    pipeline.validate_data_config(data)
    diffusion_cfg = config.diffusion
    schedule = schedules.make_schedule(
        diffusion_cfg.schedule,
        diffusion_cfg.num_timesteps,
        diffusion_cfg.beta_start,
        diffusion_cfg.beta_end,
    )
    forward.validate_prediction(diffusion_cfg.prediction)
    if diffusion_cfg.process not in PROCESSES:
        raise ValueError(
            f"diffusion.process={diffusion_cfg.process!r} is not known; allowed: "
            f"{', '.join(PROCESSES)}"
        )
    model_config = registry.make_model_config(
        config.model, image_size=data.image_size, channels=data.channels
    )
    build = registry.build_model(model_config)
    optimizer_config = OptimizerConfig(**config.optimizer)
    optimizer_config.validate()
    sampler = SamplerConfig(**config.sampler)
    if diffusion_cfg.process == "flow":
        flow.validate_flow_sampler(sampler.name, sampler.num_steps, diffusion_cfg.flow_shift)
    else:
        sampler.validate(schedule.num_timesteps)
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
        ),
        flow_shift=diffusion_cfg.flow_shift,
        sampler=sampler,
        mesh=mesh,
    )
