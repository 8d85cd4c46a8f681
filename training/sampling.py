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
from diffusion import flow, grids, guidance, samplers
from diffusion.schedules import NoiseSchedule
from errors import ConfigError
from models.functional import FunctionalModel, Params
from training.conditioning import SampleConditions


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Typed view of `config.sampler`."""

    name: str = "ddim"
    num_steps: int = 100
    max_steps: int = 0  # pad the step grid to this length (0: no padding), one compile for all
    spacing: str = "trailing"
    eta: float = 0.0
    num_samples: int = 64
    thresholding: str = "static"
    dynamic_percentile: float = 0.995
    guidance_scale: float = 1.0
    guidance_rescale: float = 0.0
    prompts: str = ""  # ";"-separated; "" = one per class from the dataset's captions
    negative_prompt: str = ""  # replaces the unconditional branch; "" = the null condition
    class_labels: str = ""  # class-conditional models: "3,5"; "" = every class

    def validate(self, num_timesteps: int, process: str = "ddpm", flow_shift: float = 1.0) -> None:
        """Raises ConfigError naming the `sampler.*` field before anything is compiled.

        A flow model (`process="flow"`) is integrated on its own time grid: only the name, the
        step count and the shift apply, not the DDPM grid's spacing, eta or thresholding.
        """
        if process == "flow":
            try:
                flow.validate_flow_sampler(self.name, self.num_steps, flow_shift)
            except ValueError as err:
                raise ConfigError(f"{err} (diffusion.process='flow')") from err
        else:
            samplers.validate_sampler(self.name, self.num_steps, num_timesteps, self.spacing)
            guidance.validate_thresholding(self.thresholding, self.dynamic_percentile)
            if not 0.0 <= self.eta <= 1.0:
                raise ConfigError(f"sampler.eta={self.eta!r} must be in [0, 1].")
            if self.max_steps and not self.num_steps <= self.max_steps <= num_timesteps:
                raise ConfigError(
                    f"sampler.max_steps={self.max_steps!r} must be 0 (no padding) or in "
                    f"[sampler.num_steps={self.num_steps}, {num_timesteps}]."
                )
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ConfigError(
                f"sampler.guidance_rescale={self.guidance_rescale!r} must be in [0, 1]."
            )
        if self.num_samples < 1:
            raise ConfigError(f"sampler.num_samples={self.num_samples!r} must be >= 1.")


def make_sample_fn(
    model: FunctionalModel,
    schedule: NoiseSchedule,
    sampler: SamplerConfig,
    *,
    prediction: str,
    image_shape: tuple[int, int, int],
    mesh: Mesh,
    params_sharding,
    process: str = "ddpm",
    flow_shift: float = 1.0,
    conditions: SampleConditions | None = None,
    sequence_parallel: bool = False,
) -> Callable[..., np.ndarray]:
    """Returns `sample_fn(params, key, num_steps=None, guidance_scale=None) -> numpy images`.

    Unconditional: `sampler.num_samples` images. Conditional: one image per row of `conditions`
    (num_samples per prompt), with classifier-free guidance, both branches in one batched call.
    The noise and the whole reverse chain are sharded over the batch axes of `mesh`; the image
    count is padded up to a multiple of the number of batch shards and trimmed afterwards. The
    guidance scale and the conditioning are traced, so sweeping them never recompiles.
    """
    total = sampler.num_samples if conditions is None else len(conditions.prompt_ids)
    shards = sharding.num_batch_shards(mesh)
    padded = -(-total // shards) * shards
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    cond = uncond = None
    if conditions is not None:
        cond, uncond = (_pad_rows(tree, padded) for tree in (conditions.cond, conditions.uncond))

    def sample_fn(params, key, grid, cond, uncond, guidance_scale) -> jax.Array:
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
        if process == "flow":
            return flow.sample_flow(
                guided, x_T, sampler=sampler.name, num_steps=sampler.num_steps, shift=flow_shift
            )[0]
        denoise = samplers.make_denoiser(
            guided, prediction, sampler.thresholding, sampler.dynamic_percentile
        )
        return samplers.sample_on_grid(
            denoise, grid, x_T, chain_key, sampler=sampler.name, eta=sampler.eta
        ).samples

    jitted = jax.jit(
        sample_fn,
        in_shardings=(
            params_sharding,
            replicated,
            replicated,
            batch_sharding,
            batch_sharding,
            replicated,
        ),
        out_shardings=batch_sharding,
    )

    def sample_to_host(
        params: Params,
        key: jax.Array,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> np.ndarray:
        """Samples with `num_steps` (default sampler.num_steps; with sampler.max_steps set, every
        count up to it reuses one compiled chain) and `guidance_scale` (default the config's)."""
        num_steps = sampler.num_steps if num_steps is None else num_steps
        scale = sampler.guidance_scale if guidance_scale is None else guidance_scale
        grid = None
        if process != "flow":
            samplers.validate_sampler(sampler.name, num_steps, schedule.num_timesteps)
            grid = grids.make_grid(
                schedule,
                num_steps,
                sampler.spacing,
                max_steps=sampler.max_steps or None,
                sampler=sampler.name,
            )
        images = jitted(params, key, grid, cond, uncond, jnp.float32(scale))
        images = multihost_utils.process_allgather(images, tiled=True)
        # The data range is [-1, 1]; the last step can overshoot it by float rounding.
        return np.clip(np.asarray(images)[:total], -1.0, 1.0)

    sample_to_host.chain = jitted  # the jitted chain, for compile-count checks
    return sample_to_host


def _pad_rows(tree, rows: int):
    """Pads every leaf's leading axis to `rows` by repeating its last row."""

    def pad(leaf):
        leaf = np.asarray(leaf)
        extra = rows - leaf.shape[0]
        return np.concatenate([leaf, np.repeat(leaf[-1:], extra, axis=0)]) if extra else leaf

    return jax.tree.map(pad, tree)
