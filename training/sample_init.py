"""img2img and inpainting inputs of a sampling run: the sampler's init_image / mask files read
and checked, and what they become inside the jitted chain (diffusion/editing.py does the math)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

from diffusion import editing
from errors import ConfigError
from schema import fail
from training import images

if TYPE_CHECKING:
    from training.sampling import SamplerConfig


@dataclasses.dataclass(frozen=True)
class SampleInit:
    """img2img / inpainting inputs of a sampling run (host arrays, shared by every sample)."""

    image: np.ndarray  # [H, W, C] pixels in [-1, 1]
    mask: np.ndarray | None  # [H, W, 1]: 1 = regenerate, 0 = keep; None: img2img
    strength: float
    # Extra input channels of the network (SD's 9-channel inpainting U-Net: 5 = mask + masked
    # image latents, concatenated to its input; it then runs without re-imposing anything).
    extra_channels: int = 0


def read_sample_init(
    sampler: SamplerConfig, image_size: int, channels: int, extra_channels: int = 0
) -> SampleInit | None:
    """The sampler's init_image / mask files, read and checked (None when not editing)."""

    if extra_channels and not sampler.mask:
        fail(
            "sampler.mask",
            sampler.mask,
            f"must name a mask: the network takes {extra_channels} extra input channels (an "
            "inpainting U-Net reads the mask and the masked image); set sampler.init_image too.",
        )
    if not sampler.init_image:
        return None
    try:
        image = images.load_image(sampler.init_image, image_size, channels)
        mask = images.load_mask(sampler.mask, image_size) if sampler.mask else None
    except OSError as error:
        name = (
            "sampler.mask" if sampler.mask and sampler.mask in str(error) else "sampler.init_image"
        )
        raise ConfigError(f"{name}: {error}") from error
    return SampleInit(image, mask, sampler.strength, extra_channels)


def edit_inputs(init, latent, autoencoder_params, shape):
    """(editing.Init, extra network input or None) for x_T's `shape`, inside the jitted chain."""
    pixels = jnp.broadcast_to(init["image"][None], (shape[0], *init["image"].shape))
    encode = (
        (lambda x: x) if latent is None else (lambda x: latent.encode_mean(autoencoder_params, x))
    )
    image = encode(pixels)
    mask = init.get("mask")
    if mask is None:
        return editing.Init(image, None, from_noise=False), None
    factor = pixels.shape[1] // shape[1]
    small = jnp.broadcast_to(mask[None, ::factor, ::factor], (shape[0], *shape[1:3], 1))
    from_noise = init["strength"] == 1.0
    if init["extra_channels"]:  # the network sees the mask; nothing is re-imposed
        masked = encode(pixels * (mask[None] < 0.5))
        return editing.Init(image, None, from_noise=from_noise), jnp.concatenate(
            [small, masked], -1
        )
    return editing.Init(image, small, from_noise=from_noise), None
