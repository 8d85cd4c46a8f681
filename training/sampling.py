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
from diffusion import grids, guidance, samplers, solvers
from diffusion.precond import Precond
from diffusion.schedules import NoiseSchedule
from models.functional import FunctionalModel, Params
from schema import field, one_of, require
from training.conditioning import SampleConditions
from training.latent import LatentSpace

MAX_SAMPLES = 65_536  # images per prompt / class in one sampling batch (allocated whole)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """`config.sampler`: how sample grids and --mode=sample draw images."""

    name: str = field("ddim", f"One of: {', '.join(solvers.SAMPLERS)} (flow: euler, heun).")
    num_steps: int = field(100, "Reverse steps (Heun evaluates the network twice per step).")
    max_steps: int = field(
        0,
        "Pad the step grid to this length so every num_steps <= max_steps shares one compile "
        "(padding steps are skipped and cost no network calls); 0 disables padding.",
    )
    spacing: str = field(
        "trailing", "linspace | leading | trailing | karras (Lin et al. 2024); VP models only."
    )
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

    def validate(self) -> None:
        """Field-level checks; those against the process and schedule are cross-section ones."""
        one_of("sampler.name", self.name, solvers.SAMPLERS)
        require(self.num_steps >= 1, "sampler.num_steps", self.num_steps, "must be >= 1.")
        require(
            self.max_steps == 0 or self.max_steps >= self.num_steps,
            "sampler.max_steps",
            self.max_steps,
            f"must be 0 (no padding) or >= sampler.num_steps={self.num_steps}.",
        )
        one_of("sampler.spacing", self.spacing, grids.SPACINGS)
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
) -> Callable[..., np.ndarray]:
    """Returns `sample_fn(params, key, num_steps=None, guidance_scale=None) -> numpy images`.

    Unconditional: `sampler.num_samples` images. Conditional: one image per row of `conditions`
    (num_samples per prompt), with classifier-free guidance, both branches in one batched call.
    The noise and the whole reverse chain are sharded over the batch axes of `mesh`; the image
    count is padded up to a multiple of the number of batch shards and trimmed afterwards. The
    guidance scale and the conditioning are traced, so sweeping them never recompiles. With a
    `latent` space the chain runs on latents and ends with the frozen decoder (sharded alike), so
    the images returned are pixels.
    """
    total = sampler.num_samples if conditions is None else len(conditions.prompt_ids)
    shards = sharding.num_batch_shards(mesh)
    padded = -(-total // shards) * shards
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    cond = uncond = None
    if conditions is not None:
        cond, uncond = (_pad_rows(tree, padded) for tree in (conditions.cond, conditions.uncond))

    def sample_fn(params, key, grid, cond, uncond, guidance_scale, decoder_params) -> jax.Array:
        noise_key, chain_key = jax.random.split(key)
        x_T = jax.random.normal(noise_key, (padded, *image_shape), jnp.float32)
        x_T = jax.lax.with_sharding_constraint(x_T, batch_sharding)

        def model_fn(x_t, t, kwargs=None):
            with sharding.activation_constraints(mesh, sequence_parallel):
                return model.apply(params, x_t, t, **(kwargs or {}))

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
            denoise, grid, x_T, chain_key, sampler=sampler.name, eta=sampler.eta, process=process
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
        num_steps = sampler.num_steps if num_steps is None else num_steps
        scale = sampler.guidance_scale if guidance_scale is None else guidance_scale
        num_timesteps = schedule.num_timesteps if schedule is not None else None
        samplers.validate_sampler(sampler.name, num_steps, num_timesteps, sampler.spacing, process)
        grid = samplers.make_grid(
            sampler.name,
            num_steps,
            process=process,
            schedule=schedule,
            spacing=sampler.spacing,
            flow_shift=flow_shift,
            max_steps=sampler.max_steps or None,
            steps_offset=sampler.steps_offset,
            set_alpha_to_one=sampler.set_alpha_to_one,
        )
        call_cond, call_uncond = cond, uncond
        if conditions is not None:
            if len(conditions.prompt_ids) != total:
                raise ValueError(f"conditions have {len(conditions.prompt_ids)} rows, not {total}.")
            call_cond, call_uncond = (
                _pad_rows(tree, padded) for tree in (conditions.cond, conditions.uncond)
            )
        decoder_params = None if latent is None else latent.params
        return jitted(params, key, grid, call_cond, call_uncond, jnp.float32(scale), decoder_params)

    def sample_to_host(
        params: Params,
        key: jax.Array,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> np.ndarray:
        """Samples with `num_steps` (default sampler.num_steps; with sampler.max_steps set, every
        count up to it reuses one compiled chain) and `guidance_scale` (default the config's)."""
        images = sample_on_device(params, key, num_steps, guidance_scale)
        images = multihost_utils.process_allgather(images, tiled=True)
        # The data range is [-1, 1]; the last step can overshoot it by float rounding.
        return np.clip(np.asarray(images)[:total], -1.0, 1.0)

    sample_to_host.chain = jitted  # the jitted chain, for compile-count checks
    sample_to_host.on_device = sample_on_device  # sharded output, for evaluation
    sample_to_host.num_images = total
    return sample_to_host


def _pad_rows(tree, rows: int):
    """Pads every leaf's leading axis to `rows` by repeating its last row."""

    def pad(leaf):
        leaf = np.asarray(leaf)
        extra = rows - leaf.shape[0]
        return np.concatenate([leaf, np.repeat(leaf[-1:], extra, axis=0)]) if extra else leaf

    return jax.tree.map(pad, tree)
