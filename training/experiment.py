"""Turns a run config into the plain objects a run needs (all checks happen before, once)."""

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
from diffusion.schedules import NoiseSchedule
from errors import ConfigError
from input_pipeline import captions, pipeline
from models import registry
from models.autoencoder import AutoencoderConfig
from models.functional import FunctionalModel, functionalize
from training import conditioning, pretrained
from training.conditioning import SampleConditions, TextBank
from training.latent import LatentSpace, load_latent_space
from training.optimizer import learning_rate_schedule, make_optimizer
from training.run_config import RunConfig, TextEncoderConfig
from training.sample_init import SampleInit, read_sample_init
from training.sampling import SamplerConfig
from training.train_step import FrozenInputs, StepConfig


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything derived from the run config: schedule, network, optimizer, sampler, mesh."""

    run: RunConfig  # the typed config everything below was built from
    schedule: NoiseSchedule | None  # the VP schedule (None for flow)
    build_model: Callable[[nnx.Rngs], nnx.Module]
    model: FunctionalModel
    optimizer: optax.GradientTransformation
    learning_rate_fn: optax.Schedule
    step_config: StepConfig
    mesh: Mesh
    sharding_rules: tuple[tuple[str, str], ...] = ()  # logical axis -> mesh axis, in order
    num_classes: int = 0
    text_encoder: Any = None  # models.text_encoders.TextEncoder when conditioning.kind = "text"
    caption_bank: TextBank | None = None  # the dataset's captions + the empty prompt (null row)
    sample_conditions: SampleConditions | None = None  # what sample grids / --mode=sample draw
    latent: LatentSpace | None = None  # latent diffusion: the frozen autoencoder
    # Reads the U-Net weights a fresh run starts from (init_from / pretrained.path); None: random.
    initial_params_fn: Callable[[], Any] | None = None
    sample_init: SampleInit | None = None  # img2img / inpainting inputs of the sampler

    @property
    def frozen(self) -> FrozenInputs | None:
        """What the train step reads but never trains (None when there is nothing)."""
        if self.caption_bank is None and self.latent is None:
            return None
        params = None if self.latent is None else self.latent.params
        return FrozenInputs(bank=self.caption_bank, autoencoder=params)

    @property
    def data(self) -> pipeline.DataConfig:
        return self.run.data

    @property
    def sampler(self) -> SamplerConfig:
        return self.run.sampler

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """[H, W, C] of what the diffusion model sees: pixels, or latents of a latent run."""
        if self.latent is not None:
            return self.latent.latent_shape(self.data.image_size)
        return (self.data.image_size, self.data.image_size, self.data.channels)


def build_experiment(
    config: RunConfig | ml_collections.ConfigDict,
    devices: list[jax.Device] | None = None,
    *,
    shape_only_weights: bool = False,
) -> Experiment:
    """Builds the run's objects from a RunConfig (or a ConfigDict, turned into one first).

    Every check runs in `RunConfig.from_configdict` (ConfigError naming the field); the only
    computation here is the frozen text encoder's one pass over the dataset's captions and the
    sampling prompts (text-conditioned runs). `shape_only_weights` reads the frozen text encoder
    and autoencoder as architectures only (ShapeDtypeStruct params, zero text embeddings): what
    --mode=compile lowers on.
    """
    devices = list(devices or jax.devices())
    run = config
    if not isinstance(run, RunConfig):
        run = RunConfig.from_configdict(config, len(devices), jax.process_count())
    mesh = sharding.make_mesh(run.mesh, devices)
    data, cond, sampler = run.data, run.conditioning, run.sampler
    num_classes = pipeline.num_classes(data)
    encoder, caption_table = None, []
    if cond.kind == "text":
        if data.name in captions.CAPTIONS:  # else free text, embedded batch by batch
            caption_table = captions.caption_table(data.name)
        encoder = load_text_encoder(run.text_encoder, shape_only_weights)  # runs nothing yet
    # The null condition: the reserved class row, or the caption bank's last (empty) prompt.
    null_id = {"none": 0, "class": num_classes, "text": len(caption_table)}[cond.kind]
    build = registry.build_model(run.model)
    latent = load_latent_space(run.autoencoder, shape_only_weights)  # the frozen autoencoder
    bank = conditioning.caption_bank(encoder, caption_table) if encoder else None
    return Experiment(
        run=run,
        schedule=run.diffusion.make_schedule(),
        build_model=build,
        model=functionalize(build),
        optimizer=make_optimizer(run.optimizer),
        learning_rate_fn=learning_rate_schedule(run.optimizer),
        step_config=StepConfig(
            precond=run.diffusion.precond,
            weighting=run.diffusion.weighting,
            time_sampling=run.diffusion.time_sampling,
            ema_decay=run.optimizer.ema_decay,
            ema_warmup=run.optimizer.ema_warmup,
            process=run.diffusion.process,
            conditioning=cond.kind,
            cond_dropout=cond.dropout if cond.kind != "none" else 0.0,
            null_id=null_id,
            grad_accumulation_steps=run.training.grad_accumulation_steps,
            autoencoder=run.model if isinstance(run.model, AutoencoderConfig) else None,
            kl_weight=run.training.kl_weight,
            latent=latent,
        ),
        mesh=mesh,
        sharding_rules=sharding.rules_for(mesh, run.mesh.rules),
        num_classes=num_classes,
        text_encoder=encoder,
        caption_bank=bank,
        latent=latent,
        sample_init=read_sample_init(
            sampler,
            data.image_size,
            data.channels,
            getattr(run.model, "in_channels", 0) - getattr(run.model, "out_channels", 0),
        ),
        initial_params_fn=None
        if shape_only_weights
        else pretrained.initial_params_fn(run.init_from, run.pretrained.path, run.model),
        sample_conditions=make_sample_conditions(run, sampler, num_classes, encoder),
    )


def make_sample_conditions(
    run: RunConfig, sampler: SamplerConfig, num_classes: int, encoder: Any
) -> SampleConditions | None:
    """What `sampler` draws for this run: its prompts / class labels (default: one per class of
    the data's captions) and negative prompt, encoded once on the host; None if unconditional."""
    data = run.data
    return conditioning.sample_conditions(
        run.conditioning.kind,
        per_prompt=sampler.num_samples,
        prompts=sampler.prompts,
        negative_prompt=sampler.negative_prompt,
        class_labels=sampler.class_labels,
        num_classes=num_classes,
        default_prompts=(
            captions.class_prompts(data.name) if data.name in captions.CAPTIONS else ()
        ),
        encoder=encoder,
    )


def load_text_encoder(encoder_cfg: TextEncoderConfig, shape_only: bool = False) -> Any:
    """The frozen encoder named by `config.text_encoder` ("" path: the shipped MiniLM copy);
    `shape_only`: its architecture alone (see text_encoders.load_text_encoder)."""
    from models import text_encoders  # noqa: PLC0415 (tokenizers etc. only when text is used)

    try:
        path = encoder_cfg.path or text_encoders.default_path(encoder_cfg.name)
        encoder = text_encoders.load_text_encoder(
            encoder_cfg.name,
            path,
            encoder_cfg.max_length,
            tokenizer_path=encoder_cfg.tokenizer_path or None,
            shape_only=shape_only,
        )
        return dataclasses.replace(
            encoder,
            use_pooled=encoder_cfg.use_pooled,
            attend_padding=encoder_cfg.attend_padding,
        )
    except (ValueError, OSError) as err:  # a checkpoint that does not match the config
        message = str(err)
        if "text_encoder." not in message:
            message = f"text_encoder.path={encoder_cfg.path!r}: {message}"
        raise ConfigError(message) from err
