"""Jitted, batch-sharded sampling from a FunctionalModel's parameters (EMA for sample grids)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

import sharding
from diffusion import editing, grids, guidance, samplers, solvers
from diffusion.precond import Precond
from diffusion.schedules import NoiseSchedule
from models.functional import FunctionalModel, Params
from schema import fail, field, one_of, require
from training import grid_files
from training.conditioning import SampleConditions
from training.latent import LatentSpace
from training.sample_init import SampleInit, edit_inputs

MAX_SAMPLES = 65_536  # images per prompt / class in one sampling batch (allocated whole)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """`config.sampler`: how sample grids and --mode=sample draw images."""

    name: str = field(
        "ddim",
        f"One of: {', '.join(solvers.SAMPLERS)} (flow: {', '.join(solvers.names_for('flow'))}).",
    )
    num_steps: int = field(100, "Reverse steps (Heun evaluates the network twice per step).")
    max_steps: int = field(
        0,
        "Pad the step grid to this length so every num_steps <= max_steps shares one compile "
        "(padding steps are skipped and cost no network calls); 0 disables padding.",
    )
    spacing: str = field(
        "trailing",
        "linspace | leading | trailing (Lin et al. 2024) | karras | edm (Karras et al. 2022, "
        "rho below) | logsnr (uniform in log-SNR) | file:PATH (a grid file, e.g. from "
        "--mode=optimize_grid; sampler.num_steps must equal its level count); VP models only.",
    )
    rho: float = field(7.0, "The 'edm' spacing's exponent rho (7 in Karras et al. 2022).")
    steps_offset: int = field(
        0,
        "Added to every 'leading' timestep, as diffusers' steps_offset (Stable Diffusion's "
        "scheduler configs use 1); other spacings ignore it.",
    )
    set_alpha_to_one: bool = field(
        True,
        "ddim: the last step lands on alpha_bar = 1 (a clean sample); False lands on the "
        "schedule's alpha_bar at t = 0, as diffusers' DDIM with set_alpha_to_one=False (Stable "
        "Diffusion's configs). Other samplers always end at sigma = 0, as diffusers' do.",
    )
    eta: float = field(0.0, "DDIM stochasticity: 0 is deterministic, 1 matches DDPM's variance.")
    num_samples: int = field(64, "Images per grid / --mode=sample run (per prompt if any).")
    thresholding: str = field("static", "none | static (clip x0 to [-1, 1]) | dynamic (Imagen).")
    dynamic_percentile: float = field(0.995, "Quantile of |x0| for dynamic thresholding.")
    guidance_scale: float = field(1.0, "Classifier-free guidance scale (conditional models).")
    guidance_rescale: float = field(0.0, "Lin et al. 2023 guidance rescale phi in [0, 1].")
    prompts: str = field(
        "", "Prompts separated by ';' ('' = one per class from the data's captions)."
    )
    negative_prompt: str = field(
        "", "Replaces the unconditional CFG branch ('' = the null condition)."
    )
    class_labels: str = field(
        "", "Class-conditional models: labels to draw, e.g. '3,5' ('' = every class)."
    )
    init_image: str = field(
        "",
        "img2img / inpainting: an image file every sample starts from (centre-cropped, resized "
        "to data.image_size; latent runs encode it to the VAE posterior mean); '' = off.",
    )
    mask: str = field(
        "",
        "Inpainting: a mask image, white = regenerate, black = keep init_image (re-imposed, "
        "noised to each step's level); with a 9-channel inpainting U-Net it is an input "
        "instead. '' = img2img (nothing kept).",
    )
    strength: float = field(
        1.0,
        "img2img / inpainting: the share of the chain that runs (diffusers' strength): the "
        "image is noised to step int(num_steps * (1 - strength)); 1 = every step (inpainting "
        "then starts from pure noise).",
    )

    def validate(self) -> None:
        """Field-level checks; those against the process and schedule are cross-section ones."""
        one_of("sampler.name", self.name, solvers.SAMPLERS)
        require(self.num_steps >= 1, "sampler.num_steps", self.num_steps, "must be >= 1.")
        require(0.0 < self.strength <= 1.0, "sampler.strength", self.strength, "must be in (0, 1].")
        require(
            not self.mask or bool(self.init_image),
            "sampler.mask",
            self.mask,
            "needs sampler.init_image (the image whose unmasked part is kept).",
        )
        if self.init_image:
            try:
                editing.start_step(self.num_steps, self.strength)
            except ValueError as error:
                fail("sampler.strength", self.strength, f"with sampler.num_steps: {error}.")
        require(
            self.max_steps == 0 or self.max_steps >= self.num_steps,
            "sampler.max_steps",
            self.max_steps,
            f"must be 0 (no padding) or >= sampler.num_steps={self.num_steps}.",
        )
        if grid_files.is_file_spacing(self.spacing):
            self.grid_sigmas()  # a missing or malformed file fails here, before any work
        else:
            one_of("sampler.spacing", self.spacing, grids.SPACINGS)
        require(self.rho > 0, "sampler.rho", self.rho, "must be > 0.")
        require(self.steps_offset >= 0, "sampler.steps_offset", self.steps_offset, "must be >= 0.")
        require(0.0 <= self.eta <= 1.0, "sampler.eta", self.eta, "must be in [0, 1].")
        one_of("sampler.thresholding", self.thresholding, guidance.THRESHOLDINGS)
        require(
            0.0 < self.dynamic_percentile <= 1.0,
            "sampler.dynamic_percentile",
            self.dynamic_percentile,
            "must be in (0, 1].",
        )
        require(
            0.0 <= self.guidance_rescale <= 1.0,
            "sampler.guidance_rescale",
            self.guidance_rescale,
            "must be in [0, 1].",
        )
        require(
            1 <= self.num_samples <= MAX_SAMPLES,
            "sampler.num_samples",
            self.num_samples,
            f"must be in [1, {MAX_SAMPLES}] (images per prompt in one sampling batch).",
        )

    def grid_sigmas(self) -> np.ndarray | None:
        """The levels of a 'file:PATH' spacing (None for a spacing rule), checked against
        num_steps; ConfigError naming sampler.spacing when the file is missing or malformed."""
        if not grid_files.is_file_spacing(self.spacing):
            return None
        try:
            sigmas, _ = grid_files.read_grid(grid_files.path_of(self.spacing))
        except ValueError as error:
            fail("sampler.spacing", self.spacing, f"{error}.")
        require(
            len(sigmas) == self.num_steps,
            "sampler.num_steps",
            self.num_steps,
            f"must equal the {len(sigmas)} levels of the grid file sampler.spacing="
            f"{self.spacing!r}.",
        )
        return sigmas


def make_sample_fn(
    model: FunctionalModel,
    schedule: NoiseSchedule | None,
    sampler: SamplerConfig,
    *,
    precond: Precond,
    image_shape: tuple[int, int, int],
    mesh: Mesh,
    params_sharding,
    process: str = "ddpm",
    flow_shift: float = 1.0,
    conditions: SampleConditions | None = None,
    sequence_parallel: bool = False,
    latent: LatentSpace | None = None,
    init: SampleInit | None = None,
) -> Callable[..., np.ndarray]:
    """Returns `sample_fn(params, key, num_steps=None, guidance_scale=None) -> numpy images`.

    Unconditional: `sampler.num_samples` images. Conditional: one image per row of `conditions`
    (num_samples per prompt), with classifier-free guidance, both branches in one batched call.
    The noise and the whole reverse chain are sharded over the batch axes of `mesh`; the image
    count is padded up to a multiple of the number of batch shards and trimmed afterwards. The
    guidance scale and the conditioning are traced, so sweeping them never recompiles. With a
    `latent` space the chain runs on latents and ends with the frozen decoder (sharded alike), so
    the images returned are pixels. With `init` every chain is an img2img / inpainting edit of
    its image (sampler.strength of the chain runs; a mask re-imposes the kept region).
    """
    total = sampler.num_samples if conditions is None else len(conditions.prompt_ids)
    file_sigmas = sampler.grid_sigmas()  # read once, on the host
    shards = sharding.num_batch_shards(mesh)
    padded = -(-total // shards) * shards
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    cond = uncond = None
    if conditions is not None:
        cond, uncond = (_pad_rows(tree, padded) for tree in (conditions.cond, conditions.uncond))

    init_arrays = None
    if init is not None:
        init_arrays = {"image": init.image}
        if init.mask is not None:
            init_arrays["mask"] = init.mask

    def sample_fn(params, key, grid, cond, uncond, guidance_scale, decoder_params) -> jax.Array:
        noise_key, chain_key = jax.random.split(key)
        x_T = jax.random.normal(noise_key, (padded, *image_shape), jnp.float32)
        x_T = jax.lax.with_sharding_constraint(x_T, batch_sharding)
        edit = None
        if init is not None:
            arrays = {**init_arrays, "strength": init.strength}
            arrays["extra_channels"] = init.extra_channels
            edit, extra = edit_inputs(arrays, latent, decoder_params, x_T.shape)
            if extra is not None:  # rides with the conditioning through CFG's batching
                cond, uncond = {**cond, "concat": extra}, {**uncond, "concat": extra}

        def model_fn(x_t, t, kwargs=None):
            kwargs = dict(kwargs or {})
            if "concat" in kwargs:
                x_t = jnp.concatenate([x_t, kwargs.pop("concat").astype(x_t.dtype)], axis=-1)
            with sharding.activation_constraints(mesh, sequence_parallel):
                return model.apply(params, x_t, t, **kwargs)

        guided = samplers.conditioned_model(
            model_fn,
            cond,
            uncond,
            None if cond is None else guidance_scale,
            sampler.guidance_rescale,
        )
        denoise = samplers.make_denoiser(
            guided, precond, sampler.thresholding, sampler.dynamic_percentile, process
        )
        samples = samplers.sample_on_grid(
            denoise,
            grid,
            x_T,
            chain_key,
            sampler=sampler.name,
            eta=sampler.eta,
            process=process,
            init=edit,
        ).samples
        if latent is None:
            return samples
        images = latent.decode(decoder_params, samples)
        return jax.lax.with_sharding_constraint(images, batch_sharding)

    jitted = jax.jit(
        sample_fn,
        in_shardings=(
            params_sharding,
            replicated,
            replicated,
            batch_sharding,
            batch_sharding,
            replicated,
            replicated,
        ),
        out_shardings=batch_sharding,
    )

    def grid_for(num_steps: int | None = None) -> grids.Grid:
        """The padded step grid of a `num_steps` chain (default sampler.num_steps), on the host."""
        num_steps = sampler.num_steps if num_steps is None else num_steps
        num_timesteps = schedule.num_timesteps if schedule is not None else None
        rule = "linspace" if file_sigmas is not None else sampler.spacing  # unused with a file
        samplers.validate_sampler(sampler.name, num_steps, num_timesteps, rule, process)
        grid = samplers.make_grid(
            sampler.name,
            num_steps,
            process=process,
            schedule=schedule,
            spacing=rule,
            flow_shift=flow_shift,
            max_steps=sampler.max_steps or None,
            steps_offset=sampler.steps_offset,
            set_alpha_to_one=sampler.set_alpha_to_one,
            rho=sampler.rho,
            sigmas=file_sigmas,
        )
        if init is not None:  # the edit runs the grid's last steps (traced: no recompile)
            grid = grids.drop_first(grid, editing.start_step(num_steps, init.strength))
        return grid

    def chain_arguments(
        params: Params,
        key: jax.Array,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        conditions: SampleConditions | None = None,
    ) -> tuple:
        """What `sample_on_device` passes the jitted chain (--mode=compile lowers it on these)."""
        grid = grid_for(num_steps)
        scale = sampler.guidance_scale if guidance_scale is None else guidance_scale
        call_cond, call_uncond = cond, uncond
        if conditions is not None:
            if len(conditions.prompt_ids) != total:
                raise ValueError(f"conditions have {len(conditions.prompt_ids)} rows, not {total}.")
            call_cond, call_uncond = (
                _pad_rows(tree, padded) for tree in (conditions.cond, conditions.uncond)
            )
        decoder_params = None if latent is None else latent.params
        return params, key, grid, call_cond, call_uncond, jnp.float32(scale), decoder_params

    def sample_on_device(
        params: Params,
        key: jax.Array,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        conditions: SampleConditions | None = None,
    ) -> jax.Array:
        """The padded batch [padded, H, W, C] as a global array sharded over the batch axes.

        `conditions` (conditional models) replaces the build-time ones for this call; it must
        have the same number of rows. Rows past `total` are padding."""
        return jitted(*chain_arguments(params, key, num_steps, guidance_scale, conditions))

    def sample_to_host(
        params: Params,
        key: jax.Array,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        conditions: SampleConditions | None = None,
    ) -> np.ndarray:
        """Samples with `num_steps` (default sampler.num_steps; with sampler.max_steps set, every
        count up to it reuses one compiled chain), `guidance_scale` (default the config's) and
        `conditions` (default the build-time ones; as many rows, so no recompile)."""
        images = sample_on_device(params, key, num_steps, guidance_scale, conditions)
        images = multihost_utils.process_allgather(images, tiled=True)
        # The data range is [-1, 1]; the last step can overshoot it by float rounding.
        return np.clip(np.asarray(images)[:total], -1.0, 1.0)

    sample_to_host.chain = jitted  # the jitted chain, for compile-count checks
    sample_to_host.chain_arguments = chain_arguments  # its arguments, for --mode=compile
    sample_to_host.grid = grid_for  # the step grid of a num_steps chain (its NFE, for evaluation)
    sample_to_host.on_device = sample_on_device  # sharded output, for evaluation
    sample_to_host.num_images = total
    sample_to_host.padded_rows = padded  # images per chain: total padded to the batch shards
    return sample_to_host


def _pad_rows(tree, rows: int):
    """Pads every leaf's leading axis to `rows` by repeating its last row."""

    def pad(leaf):
        leaf = np.asarray(leaf)
        extra = rows - leaf.shape[0]
        return np.concatenate([leaf, np.repeat(leaf[-1:], extra, axis=0)]) if extra else leaf

    return jax.tree.map(pad, tree)
