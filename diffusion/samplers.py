"""The sampling driver: one `lax.scan` over a padded grid for every sampler and process.

Steps and the registry live in solvers.py. A VP model is integrated in the sigma ("VE") view of
Karras et al. 2022 (x = x_t / sqrt(alpha_bar) = x0 + sigma eps), a flow model on x_t with
sigma = t (processes.py). The network is only seen through a denoiser D(x, sigma, t) -> x0 built
from a model function and the preconditioning (precond.py), so every sampler serves every
parameterisation. Different step counts reuse one compile (see grids.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import editing, grids, guidance, precond, processes, solvers
from diffusion.editing import Init
from diffusion.grids import Grid
from diffusion.precond import Precond
from diffusion.schedules import NoiseSchedule
from diffusion.solvers import SAMPLERS, Denoiser


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Samples x_0, optional per-step states x_t [S, ...] (model scale) and network evaluations."""

    samples: jax.Array
    trajectory: jax.Array | None
    nfe: jax.Array  # int32 scalar: calls of the (possibly CFG-batched) network


def validate_sampler(
    name: str,
    num_steps: int,
    num_timesteps: int | None = None,
    spacing: str = "leading",
    process: str = "ddpm",
) -> None:
    """Raises ValueError when a sampler option is invalid for `process` (num_timesteps bounds
    the step count of a VP model; flow time is continuous)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not known; allowed: {', '.join(SAMPLERS)}")
    if process not in SAMPLERS[name].processes:
        allowed = ", ".join(solvers.names_for(process))
        raise ValueError(
            f"sampler={name!r} cannot integrate the {process!r} process; allowed: {allowed}"
        )
    upper = num_timesteps if process == "ddpm" and num_timesteps else None
    if not isinstance(num_steps, int) or num_steps < 1 or (upper and num_steps > upper):
        bound = f"[1, {upper}] (the schedule's timesteps)" if upper else ">= 1"
        raise ValueError(f"num_steps={num_steps!r} must be an integer in {bound}")
    if process == "ddpm":
        grids.validate_spacing(spacing)


def make_grid(
    sampler: str,
    num_steps: int,
    *,
    process: str = "ddpm",
    schedule: NoiseSchedule | None = None,
    spacing: str = "leading",
    flow_shift: float = 1.0,
    max_steps: int | None = None,
    lms_order: int = solvers.LMS_MAX_ORDER,
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    rho: float = grids.KARRAS_RHO,
    sigmas: np.ndarray | None = None,
) -> Grid:
    """The padded grid of an n-step `sampler` (built on the host): the VP schedule's timesteps in
    `spacing` ("leading" ones shifted by `steps_offset`, "edm" with `rho`), or flow times shifted
    by `flow_shift`; plus the rows the sampler asks for. `set_alpha_to_one=False` ends a DDIM
    grid at the schedule's first level alpha_bar_0 (diffusers' setting; other samplers end at
    sigma = 0). `sigmas` (VP: the n active levels, e.g. from grid_search.py) replace the
    spacing; num_steps must then be their count."""
    spec = SAMPLERS[sampler]
    if sigmas is not None and len(sigmas) != num_steps:
        raise ValueError(f"num_steps={num_steps} but the given grid has {len(sigmas)} levels")
    if sigmas is not None and process == "flow":
        raise ValueError("explicit grid sigmas are for VP models (process='ddpm')")
    if process == "flow":
        timesteps, sigmas = grids.flow_timesteps_and_sigmas(num_steps, flow_shift)
    else:
        timesteps, sigmas = grids.timesteps_and_sigmas(
            schedule,
            num_steps,
            spacing,
            skip_zero=spec.skip_zero,
            steps_offset=steps_offset,
            end_at_zero=set_alpha_to_one or not spec.settable_final_alpha,
            rho=rho,
            sigmas=sigmas,
        )
    extras = spec.grid_rows(sigmas, lms_order) if spec.grid_rows else None
    return grids.pad_grid(timesteps, sigmas, max_steps, extras)


def make_denoiser(
    model: Callable[[jax.Array, jax.Array], jax.Array],
    parameterisation: Precond | str = "eps",
    thresholding: str = "none",
    dynamic_percentile: float = 0.995,
    process: str = "ddpm",
) -> Denoiser:
    """D(x, sigma, t): turn the state x into the model's x_t, call it, convert to x0, threshold."""
    precond_ = Precond(parameterisation) if isinstance(parameterisation, str) else parameterisation

    def denoise(x: jax.Array, sigma: jax.Array, t: jax.Array) -> jax.Array:
        alpha, s, model_scale = processes.view_levels(process, sigma)
        x_t = x * model_scale
        t = jnp.full((x.shape[0],), t, jnp.float32)
        output = model(x_t * precond_.input_scale(alpha, s), t).astype(x.dtype)
        x0 = precond_.x0(output, x_t, alpha, s)
        return guidance.threshold_x0(x0, thresholding, dynamic_percentile)

    return denoise


def _step_rows(grid: Grid) -> dict[str, jax.Array]:
    """What each scanned step reads: grid.* of its own step, in rows of one per step."""
    return {
        "t": grid.timesteps,
        "t_next": jnp.append(grid.timesteps[1:], 0.0),
        "sigma": grid.sigmas,
        "sigma_next": grid.sigmas_next,
        "steps_left": grid.steps_left,
        "index": jnp.arange(grid.max_steps, dtype=jnp.int32),
        **grid.extras,
    }


def count_evaluations(grid: Grid, sampler: str) -> int:
    """Network evaluations of one chain of `sampler` on `grid`, as `sample_on_grid` counts them
    (padding steps cost none): what a chain's cost is per image, without running it."""
    spec = SAMPLERS[sampler]
    per_step = jax.vmap(spec.evaluations)(_step_rows(grid))
    return int(jnp.sum(jnp.where(grid.steps_left > 0, per_step, 0)))


def sample_on_grid(
    denoise: Denoiser,
    grid: Grid,
    x_T: jax.Array,
    key: jax.Array,
    *,
    sampler: str,
    eta: float | jax.Array = 0.0,
    process: str = "ddpm",
    return_trajectory: bool = False,
    init: Init | None = None,
) -> SampleOutput:
    """Scans `sampler`'s step over the grid from x_T ~ N(0, I) (model scale) to x_0.

    Step i draws its noise as normal(fold_in(key, i)), so any reference can replay it.
    Padding steps (steps_left == 0) are skipped with `lax.cond` and cost no evaluations. A grid
    that ends above sigma = 0 (DDIM with set_alpha_to_one=False) returns x_t at its last level.
    With `init` (editing.py), the chain starts from init.image noised with x_T to the grid's
    first level and, with a mask, holds the kept region after every step (image-to-image and
    inpainting as diffusers' pipelines run them; the grid is usually cut by grids.drop_first).
    """
    spec = SAMPLERS[sampler]
    eta = jnp.asarray(eta if spec.eta is None else spec.eta, x_T.dtype)
    if init is None:
        x = x_T / processes.view_levels(process, grid.sigmas[0])[2]
    else:
        editing.validate_init(init, x_T)
        x = editing.start_state(init, x_T, grid.sigmas[0], process)
    final_sigma = grid.sigmas_next[grid.steps_left[0] - 1]  # where the last active step lands
    rows = _step_rows(grid)

    def body(carry, g):
        x, state, nfe = carry
        noise = jax.random.normal(jax.random.fold_in(key, g["index"]), x.shape, x.dtype)
        active = g["steps_left"] > 0
        x, state = jax.lax.cond(
            active,
            lambda operands: spec.step(denoise, operands[0], operands[1], g, noise, eta),
            lambda operands: operands,
            (x, state),
        )
        if init is not None and init.mask is not None:
            # Outside the step's branch, so that the step compiles as it does without `init`
            # (an all-ones mask gives the plain chain bit for bit); padding steps keep x.
            last = g["steps_left"] == 1
            held = editing.hold_known(init, x, x_T, g["sigma_next"], last, process)
            x = jnp.where(active, held, x)
        nfe = nfe + jnp.where(active, spec.evaluations(g), 0)
        sigma_now = jnp.where(active, g["sigma_next"], final_sigma)
        model_state = x * processes.view_levels(process, sigma_now)[2]
        return (x, state, nfe), (model_state if return_trajectory else None)

    initial = (x, spec.init_state(x), jnp.zeros((), jnp.int32))
    (x, _, nfe), trajectory = jax.lax.scan(body, initial, rows)
    samples = x * processes.view_levels(process, final_sigma)[2]  # exactly x when it is 0
    return SampleOutput(samples=samples, trajectory=trajectory, nfe=nfe)


def sample(
    model_fn: Callable[..., jax.Array],
    schedule: NoiseSchedule | None,
    x_T: jax.Array,
    key: jax.Array,
    *,
    sampler: str = "ddim",
    num_steps: int = 50,
    spacing: str = "leading",
    max_steps: int | None = None,
    prediction: Precond | str = "eps",
    process: str = "ddpm",
    flow_shift: float = 1.0,
    eta: float | jax.Array = 0.0,
    cond: Any = None,
    uncond: Any = None,
    guidance_scale: float | jax.Array | None = None,
    guidance_rescale: float | jax.Array = 0.0,
    thresholding: str = "none",
    dynamic_percentile: float = 0.995,
    lms_order: int = solvers.LMS_MAX_ORDER,
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    rho: float = grids.KARRAS_RHO,
    sigmas: np.ndarray | None = None,
    return_trajectory: bool = False,
    init: Init | None = None,
    strength: float = 1.0,
) -> SampleOutput:
    """Draws samples from a VP or flow model with any sampler; the notebook-facing entry point.

    Args:
      model_fn: `model_fn(x_t, t)` or, with `cond`, `model_fn(x_t, t, cond)`; returns the output
        in the `prediction` parameterisation (a name or a Precond).
      schedule: the VP noise schedule (None for `process="flow"`).
      x_T: initial noise N(0, I) [B, ...]; its sharding is kept through the scan.
      cond / uncond: conditioning pytrees with batch-leading leaves; with `guidance_scale` set,
        both branches run in one batched call per evaluation and are mixed by CFG.
      max_steps: pad the grid to this length so all step counts up to it share one compile.
      steps_offset / set_alpha_to_one: diffusers' settings of those names (see make_grid).
      rho / sigmas: the "edm" spacing's rho; explicit grid levels replacing the spacing.
      init / strength: image-to-image or inpainting (editing.Init): the chain runs the last
        int(num_steps * strength) steps of the grid, from init.image noised with x_T.
    Returns:
      SampleOutput with samples [B, ...], the per-step trajectory if asked, and the NFE.
    """
    num_timesteps = schedule.num_timesteps if schedule is not None else None
    validate_sampler(sampler, num_steps, num_timesteps, spacing, process)
    parameterisation = Precond(prediction) if isinstance(prediction, str) else prediction
    precond.validate_prediction(parameterisation.prediction, process)
    guidance.validate_thresholding(thresholding, dynamic_percentile)
    grid = make_grid(
        sampler,
        num_steps,
        process=process,
        schedule=schedule,
        spacing=spacing,
        flow_shift=flow_shift,
        max_steps=max_steps,
        lms_order=lms_order,
        steps_offset=steps_offset,
        set_alpha_to_one=set_alpha_to_one,
        rho=rho,
        sigmas=sigmas,
    )
    grid = editing.edit_grid(grid, init, strength)
    model = conditioned_model(model_fn, cond, uncond, guidance_scale, guidance_rescale)
    denoise = make_denoiser(model, parameterisation, thresholding, dynamic_percentile, process)
    return sample_on_grid(
        denoise,
        grid,
        x_T,
        key,
        sampler=sampler,
        eta=eta,
        process=process,
        return_trajectory=return_trajectory,
        init=init,
    )


def conditioned_model(
    model_fn: Callable[..., jax.Array],
    cond: Any = None,
    uncond: Any = None,
    guidance_scale: float | jax.Array | None = None,
    guidance_rescale: float | jax.Array = 0.0,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Closes a model over its conditioning, with classifier-free guidance when a scale is set."""
    if cond is None:
        return model_fn
    if guidance_scale is None:
        return lambda x, t: model_fn(x, t, cond)
    if uncond is None:
        raise ValueError("classifier-free guidance needs `uncond` (a null or negative condition)")
    return guidance.guided_model(
        model_fn, cond, uncond, jnp.asarray(guidance_scale), jnp.asarray(guidance_rescale)
    )
