"""Image-to-image and inpainting: a sampling chain started from a noised image, optionally
holding the unmasked region to the image's own noised path.

This is SDEdit (Meng et al. 2022) as diffusers' StableDiffusionImg2ImgPipeline runs it, and
the "blended" inpainting of its StableDiffusionInpaintPipeline with a plain (4-channel) network
(Lugmayr et al. 2022 without resampling; Avrahami et al. 2022):

  * `strength` in (0, 1] skips the first n - int(n strength) steps of an n-step grid
    (`start_step`, grids.drop_first);
  * the chain starts from the image noised to the first kept level with the chain's own x_T as
    the noise (or from x_T alone, `Init.from_noise`: inpainting at strength 1);
  * with a mask, after every step the kept region (mask 0) is replaced by the image noised with
    the same x_T to the level the step reached, and after the last step by the clean image.

All states here are in the sampler's view (processes.py): state = x_t / model scale.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp

from diffusion import grids, processes
from diffusion.grids import Grid


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Init:
    """What an edited chain starts from.

    image: the clean x0 in the network's space (latents for latent diffusion) [B, ...], the
      shape of x_T.
    mask: 1 where the chain regenerates, 0 where the image is kept; the image's shape or one
      that broadcasts to it (e.g. [B, H, W, 1]); fractional values blend. None: image-to-image,
      nothing is held.
    from_noise: start from x_T alone, as a plain chain does (diffusers' inpainting at strength
      1), instead of from the image noised to the grid's first level.
    """

    image: jax.Array  # [B, ...]
    mask: jax.Array | None = None  # [B, ...] or broadcastable to it
    from_noise: bool = dataclasses.field(default=False, metadata=dict(static=True))


def start_step(num_steps: int, strength: float) -> int:
    """How many leading steps of an n-step grid an edit at `strength` skips (diffusers'
    get_timesteps: the chain runs the last int(n * strength) steps).

    Raises:
      ValueError: strength outside (0, 1], or so small that no step is left.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be an integer >= 1")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise ValueError(f"strength={strength!r} must be a number in (0, 1]")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength={strength!r} must be in (0, 1] (1: start from pure noise)")
    kept = min(int(num_steps * strength), num_steps)
    if kept == 0:
        raise ValueError(
            f"strength={strength!r} leaves no step of num_steps={num_steps} (int(num_steps * "
            f"strength) = 0); use strength >= {1.0 / num_steps:g} or more steps"
        )
    return max(num_steps - kept, 0)


def edit_grid(grid: Grid, init: Init | None, strength: float) -> Grid:
    """The part of an n-step grid an edit at `strength` runs (the whole grid without `init`).

    Raises:
      ValueError: a strength start_step refuses; strength != 1 without `init`, or with
        init.from_noise (diffusers starts inpainting from pure noise only at strength 1).
    """
    if init is None:
        if strength != 1.0:
            raise ValueError(f"strength={strength!r} needs an `init` image (editing.Init)")
        return grid
    if init.from_noise and strength != 1.0:
        raise ValueError(
            f"init.from_noise starts from pure noise, which needs strength=1.0, not "
            f"{strength!r} (diffusers' inpainting starts from noise only at strength 1)"
        )
    return grids.drop_first(grid, start_step(int(grid.steps_left[0]), strength))


def validate_init(init: Init, x_T: jax.Array) -> None:
    """Raises ValueError when the image or the mask does not fit x_T's shape."""
    if init.image.shape != x_T.shape:
        raise ValueError(
            f"init.image has shape {init.image.shape}; it must equal x_T's {x_T.shape}"
        )
    if init.mask is None:
        return
    try:
        fits = jnp.broadcast_shapes(init.mask.shape, x_T.shape) == x_T.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"init.mask has shape {init.mask.shape}; it must broadcast to the image's "
            f"{x_T.shape} (e.g. {x_T.shape[:-1] + (1,)})"
        )


def noised(image: jax.Array, x_T: jax.Array, sigma: jax.Array, process: str) -> jax.Array:
    """The image noised with x_T to level sigma, as a sampler state: (alpha x0 + s x_T) / scale."""
    alpha, s, model_scale = processes.view_levels(process, sigma)
    return (alpha * image + s * x_T) / model_scale


def start_state(init: Init, x_T: jax.Array, sigma: jax.Array, process: str) -> jax.Array:
    """The state an edited chain starts from at its first level sigma."""
    if init.from_noise:
        return x_T / processes.view_levels(process, sigma)[2]
    return noised(init.image.astype(x_T.dtype), x_T, sigma, process)


def hold_known(
    init: Init,
    x: jax.Array,
    x_T: jax.Array,
    sigma_next: jax.Array,
    last: jax.Array,
    process: str,
) -> jax.Array:
    """x after a step onto sigma_next, with the kept region (mask 0) replaced by the image
    noised to sigma_next, or after the `last` step by the clean image (its state at the final
    level: image / model scale, which a DDIM grid ending at alpha_bar_0 scales back to the
    image). Image-to-image (no mask) returns x."""
    if init.mask is None:
        return x
    image = init.image.astype(x.dtype)
    clean = image / processes.view_levels(process, sigma_next)[2]
    known = jnp.where(last, clean, noised(image, x_T, sigma_next, process))
    mask = init.mask.astype(x.dtype)
    return mask * x + (1.0 - mask) * known
