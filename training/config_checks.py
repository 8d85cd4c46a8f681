"""Cross-section checks of a run config, all in one place: batch vs mesh and processes, image
size vs backbone, sampler vs process and schedule, text encoder vs conditioning and data.

Each section checks its own fields when it is built (`schema.build`); what needs two sections,
the device count or the text encoder's files is checked here, before anything is compiled.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax

import sharding
from diffusion import grids, solvers
from errors import ConfigError
from input_pipeline import captions, pipeline
from input_pipeline.pipeline import DataConfig
from schema import fail, one_of, require
from training import conditioning as conditioning_lib
from training import grid_files
from training.conditioning import ConditioningConfig

if TYPE_CHECKING:
    from evaluation.eval_config import SweepPoint
    from training.run_config import RunConfig, TextEncoderConfig


def num_classes(data: DataConfig) -> int:
    """Label classes of the data set (0: unlabelled)."""
    return pipeline.num_classes(data)


def text_widths(
    encoder: TextEncoderConfig, conditioning: ConditioningConfig, data: DataConfig
) -> tuple[int, int | None] | None:
    """(hidden, pooled) width of the text encoder when conditioning on text, read from its
    config.json (no weights loaded); None otherwise. Refuses an encoder without text
    conditioning, text conditioning without an encoder or captions, and unreadable files."""
    kind, name = conditioning.kind, encoder.name
    if kind != "text":
        require(
            name == "none",
            "text_encoder.name",
            name,
            f"needs conditioning.kind='text' (got {kind!r}); allowed here: none.",
        )
        return None
    require(
        name != "none",
        "text_encoder.name",
        name,
        "cannot encode conditioning.kind='text'; allowed: clip, t5, minilm.",
    )
    if data.name not in captions.CAPTIONS and not data.text_key:
        fail(
            "data.name",
            data.name,
            f"has no captions for conditioning.kind='text'; use {', '.join(captions.CAPTIONS)}, "
            "or data.name='tfds' or 'folder' with data.text_key.",
        )
    from models import text_encoders  # noqa: PLC0415 (tokenizers etc. only when text is used)

    try:
        path = encoder.path or text_encoders.default_path(name)
        hidden, pooled = text_encoders.text_widths(name, path, encoder.max_length)
        return hidden, pooled if encoder.use_pooled else None
    except (ValueError, OSError) as err:
        message = str(err)
        if "text_encoder." not in message:
            message = f"text_encoder.path={encoder.path!r}: {message}"
        raise ConfigError(message) from err


def check_run(run: RunConfig, num_devices: int, process_count: int) -> None:
    """Every check that spans sections; ConfigError naming the fields."""
    sizes = run.mesh.axis_sizes(num_devices)
    check_batch(run, math.prod(sizes[axis] for axis in sharding.BATCH_AXES), process_count)
    if run.conditioning.kind == "class" and num_classes(run.data) == 0:
        fail("conditioning.kind", "class", f"needs labels; data.name={run.data.name!r} has none.")
    check_model(run)
    check_sampler(run)
    check_eval(run)


def check_batch(run: RunConfig, num_batch_shards: int, process_count: int) -> None:
    """batch_size against the devices it is split over, the processes and the micro-batches."""
    batch, steps = run.batch_size, run.training.grad_accumulation_steps
    require(
        batch % num_batch_shards == 0,
        "batch_size",
        batch,
        f"must be a multiple of the {num_batch_shards} devices it is split over "
        "(mesh data x fsdp).",
    )
    require(
        batch % process_count == 0,
        "batch_size",
        batch,
        f"must divide evenly over {process_count} processes.",
    )
    require(
        batch % (num_batch_shards * steps) == 0,
        "training.grad_accumulation_steps",
        steps,
        f"must divide the per-device batch: batch_size={batch} is not a multiple of "
        f"{num_batch_shards} batch shards (mesh data x fsdp) x {steps} micro-batches = "
        f"{num_batch_shards * steps}.",
    )


def check_model(run: RunConfig) -> None:
    """The backbone against the loss and the backend (its own config checked the data shape)."""
    model = run.model
    if getattr(model, "learn_sigma", False):
        fail(
            "model.learn_sigma",
            True,
            "doubles the output channels for a learned variance, which the training loss does "
            "not use; allowed: False.",
        )
    if getattr(model, "attention_impl", None) == "cudnn":
        require(
            model.dtype == "bfloat16",
            "model.dtype",
            model.dtype,
            "cannot run model.attention_impl='cudnn' (cuDNN's fused attention takes bf16 / "
            "fp16); with float32 allowed attention_impl: None, 'xla'.",
        )
        backend = jax.default_backend()
        require(
            backend == "gpu",
            "model.attention_impl",
            "cudnn",
            f"needs a GPU, but JAX's backend is {backend!r}; allowed here: None, 'xla'.",
        )


def check_kernels_run_here(run: RunConfig) -> None:
    """Backend-specific kernels against the backend this process runs on (not checked for
    --mode=compile, which compiles for a TPU slice from any machine)."""
    backend = jax.default_backend()
    if getattr(run.model, "attention_impl", None) == "pallas_tpu":
        require(
            backend == "tpu",
            "model.attention_impl",
            "pallas_tpu",
            f"is a TPU kernel, but JAX's backend is {backend!r}; allowed here: None, 'xla' "
            "(--mode=compile compiles it for a TPU slice from any machine).",
        )


def check_sampler(run: RunConfig) -> None:
    """The sampler against the process, the schedule's length and the conditioning."""
    sampler, diffusion = run.sampler, run.diffusion
    spec = solvers.SAMPLERS[sampler.name]
    require(
        diffusion.process in spec.processes,
        "sampler.name",
        sampler.name,
        f"cannot integrate diffusion.process={diffusion.process!r}; allowed: "
        f"{', '.join(solvers.names_for(diffusion.process))}.",
    )
    file_sigmas = sampler.grid_sigmas()
    require(
        file_sigmas is None or diffusion.process == "ddpm",
        "sampler.spacing",
        sampler.spacing,
        f"is a grid of VP sigmas; diffusion.process={diffusion.process!r} takes flow times.",
    )
    if file_sigmas is not None:
        check_grid_levels(file_sigmas, diffusion, "sampler.spacing", sampler.spacing)
    if diffusion.process == "ddpm":
        for name in ("num_steps", "max_steps"):
            require(
                getattr(sampler, name) <= diffusion.num_timesteps,
                f"sampler.{name}",
                getattr(sampler, name),
                f"must be <= diffusion.num_timesteps={diffusion.num_timesteps}.",
            )
    kind = run.conditioning.kind
    if kind == "class":
        conditioning_lib.parse_class_labels(sampler.class_labels, num_classes(run.data))
    if kind == "text" and run.data.name not in captions.CAPTIONS:
        require(
            bool(conditioning_lib.parse_prompts(sampler.prompts)),
            "sampler.prompts",
            sampler.prompts,
            f"is empty and data.name={run.data.name!r} has no captions to default to; give "
            "';'-separated prompts.",
        )


def check_grid_levels(sigmas, diffusion, name: str, value, what: str = "") -> None:
    """A grid file's levels against the schedule's range; ConfigError naming `name`=`value`
    (`what`: which grid of the value, when it holds several)."""
    try:
        grids.validate_custom_sigmas(sigmas, diffusion.make_schedule())
    except ValueError as error:
        fail(name, value, f"{what}{error}.")


def check_eval(run: RunConfig) -> None:
    """Every sampler and grid of eval.sweep against the process and T; the feature network vs
    the data."""
    allowed = solvers.names_for(run.diffusion.process)
    labels = {}
    for point in run.eval.sweep_points(run.sampler.name, run.sampler.num_steps):
        one_of("eval.sweep", point.sampler, solvers.SAMPLERS)
        require(
            run.diffusion.process in solvers.SAMPLERS[point.sampler].processes,
            "eval.sweep",
            run.eval.sweep,
            f"names {point.sampler!r}, which cannot integrate diffusion.process="
            f"{run.diffusion.process!r}; allowed: {', '.join(allowed)}.",
        )
        if run.diffusion.process == "ddpm":
            require(
                point.num_steps <= run.diffusion.num_timesteps,
                "eval.sweep",
                run.eval.sweep,
                f"asks {point.num_steps} steps of {point.sampler!r}; the most is "
                f"diffusion.num_timesteps={run.diffusion.num_timesteps}.",
            )
        check_sweep_spacing(run, point)
        label = (point.sampler, grid_files.short_name(point.spacing))
        require(
            labels.setdefault(label, point.spacing) == point.spacing,
            "eval.sweep",
            run.eval.sweep,
            f"gives {point.sampler!r} the grids {labels[label]!r} and {point.spacing!r}, whose "
            f"results would share the name {point.sampler}@{label[1]}; rename the grid file.",
        )
    if run.eval.clip_model:
        require(
            run.conditioning.kind == "text",
            "eval.clip_model",
            run.eval.clip_model,
            f"scores images against prompts; conditioning.kind={run.conditioning.kind!r} has "
            "none (set conditioning.kind='text' or leave eval.clip_model empty).",
        )
    if run.eval.network_name(run.data.name) == "digits":
        require(
            run.data.name == "digits",
            "eval.feature_network",
            run.eval.feature_network,
            f"'digits' judges the 8x8 digits only; data.name={run.data.name!r} needs 'inception'.",
        )


def check_sweep_spacing(run: RunConfig, point: SweepPoint) -> None:
    """One sweep point's step grid: a spacing rule, or a 'file:PATH' grid file that reads, has
    the point's step count of levels and fits the schedule (as sampler.spacing's); VP only."""
    sweep, process = run.eval.sweep, run.diffusion.process
    require(
        not point.spacing or process == "ddpm",
        "eval.sweep",
        sweep,
        f"gives {point.sampler!r} the grid {point.spacing!r}; diffusion.process={process!r} "
        "takes flow times (diffusion.flow_shift), not spacings: drop the '@' part.",
    )
    spacing = point.spacing or run.sampler.spacing
    if process != "ddpm":
        return
    if not grid_files.is_file_spacing(spacing):
        require(
            spacing in grids.SPACINGS,
            "eval.sweep",
            sweep,
            f"names the grid {spacing!r}; allowed: {', '.join(grids.SPACINGS)}, file:PATH.",
        )
        return
    try:
        sigmas, _ = grid_files.read_grid(grid_files.path_of(spacing))
    except ValueError as error:
        fail("eval.sweep", sweep, f"names the grid {spacing!r}: {error}.")
    require(
        len(sigmas) == point.num_steps,
        "eval.sweep",
        sweep,
        f"asks {point.num_steps} steps of {point.sampler!r} on the grid file {spacing!r}, which "
        f"has {len(sigmas)} levels; a grid file is run at exactly its level count.",
    )
    check_grid_levels(sigmas, run.diffusion, "eval.sweep", sweep, f"names {spacing!r}: ")


def check_latent(latent, data: DataConfig, model_values) -> None:
    """A frozen autoencoder against the images it encodes and the model trained on its latents."""
    factor = latent.downsampling_factor
    require(
        data.image_size % factor == 0,
        "data.image_size",
        data.image_size,
        f"must be a multiple of the autoencoder's downsampling factor {factor}.",
    )
    require(
        data.channels == latent.in_channels,
        "data.channels",
        data.channels,
        f"must equal the autoencoder's in_channels={latent.in_channels}.",
    )
    name = dict(model_values).get("name", "unet")
    require(
        name != "autoencoder",
        "autoencoder.path",
        "(set)",
        "is for diffusion on latents; an autoencoder is trained on pixels (leave it empty).",
    )
