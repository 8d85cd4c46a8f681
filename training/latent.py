"""Latent diffusion (Rombach et al. 2022): a frozen KL autoencoder between pixels and the model.

With `config.autoencoder.path` set, the diffusion model is built for the latent grid
(data.image_size / the autoencoder's downsampling factor, latent_channels), the train step
encodes each batch inside the jitted step, and sample chains end with a decode, so PNG grids,
.npz samples and evaluation all see pixels.

Encoding happens on the fly in the step rather than once into a cached latent data set: each
step then draws a fresh posterior sample (the LDM recipe: a cache would freeze one sample per
image, or keep mean and log-variance and double the storage), augmentations such as CIFAR's flips
keep working, and nothing is written to disk or kept in sync with the autoencoder. The encoder
costs one forward pass per image per step (no backward pass: its params are frozen);
docs/PERFORMANCE.md has the measured share of the step.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
from etils.epath import Path

from models import autoencoder as ae
from models.functional import Params
from schema import field, require


@dataclasses.dataclass(frozen=True)
class LatentConfig:
    """`config.autoencoder`: the frozen autoencoder latent diffusion runs through."""

    path: str = field(
        "",
        "A diffusers-format AutoencoderKL directory (config.json + "
        "diffusion_pytorch_model.safetensors: a Stable Diffusion repository's vae/ folder, or "
        "what a model.name='autoencoder' run exports); '' = diffusion on pixels.",
    )
    sample_posterior: bool = field(
        True, "Train on a posterior sample of each image (LDM) instead of the posterior mean."
    )
    decode_chunk: int = field(
        0, "Decode sampled latents this many images per device at a time (0 = all at once)."
    )

    def validate(self) -> None:
        require(self.decode_chunk >= 0, "autoencoder.decode_chunk", self.decode_chunk, ">= 0.")

    def read_config(self) -> ae.AutoencoderConfig | None:
        """The autoencoder's config (its config.json only; None for pixel-space runs)."""
        if not self.path:
            return None
        from models.autoencoder_weights import CONFIG_FILE  # noqa: PLC0415

        try:
            text = (Path(self.path) / CONFIG_FILE).read_text()
            return ae.AutoencoderConfig.from_diffusers(json.loads(text))
        except (OSError, ValueError) as error:
            raise _config_error(self.path, error) from error


@dataclasses.dataclass(frozen=True, eq=False)
class LatentSpace:
    """A frozen autoencoder: its config, params and the pure encode / decode over them."""

    config: ae.AutoencoderConfig
    params: Params
    sample_posterior: bool = True
    decode_chunk: int = 0

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """[h, w, c] of the latents of image_size x image_size images."""
        side = image_size // self.config.downsampling_factor
        return (side, side, self.config.latent_channels)

    def encode(self, params: Params, images: jax.Array, key: jax.Array) -> jax.Array:
        """Images [B, H, W, C] in [-1, 1] -> the diffusion model's latents (scaled, shifted)."""
        with jax.named_scope("autoencoder_encode"):
            mean, logvar = ae.bind(self.config, params).encode(images)
            z = ae.posterior_sample(mean, logvar, key) if self.sample_posterior else mean
            return jax.lax.stop_gradient(ae.to_latent(z, self.config))

    def encode_mean(self, params: Params, images: jax.Array) -> jax.Array:
        """Images -> the latents of their posterior means (img2img / inpainting inputs)."""
        with jax.named_scope("autoencoder_encode"):
            mean, _ = ae.bind(self.config, params).encode(images)
            return ae.to_latent(mean, self.config)

    def decode(self, params: Params, latents: jax.Array) -> jax.Array:
        """The diffusion model's latents -> images in [-1, 1] (chunked when asked)."""
        network = ae.bind(self.config, params)
        z = ae.from_latent(latents, self.config)
        with jax.named_scope("autoencoder_decode"):
            if not self.decode_chunk or z.shape[0] <= self.decode_chunk:
                return jnp.clip(network.decode(z), -1.0, 1.0)
            # lax.map over chunks keeps one chunk's decoder activations alive at a time.
            images = jax.lax.map(
                lambda one: network.decode(one[None])[0], z, batch_size=self.decode_chunk
            )
            return jnp.clip(images, -1.0, 1.0)


def load_latent_space(cfg: LatentConfig, shape_only: bool = False) -> LatentSpace | None:
    """The frozen autoencoder `config.autoencoder` names (None for pixel-space runs);
    `shape_only`: its config.json alone, params as ShapeDtypeStructs (--mode=compile)."""
    if not cfg.path:
        return None
    if shape_only:
        from models.functional import functionalize  # noqa: PLC0415

        config = cfg.read_config()
        params = functionalize(ae.build_autoencoder(config)).abstract_params
        return LatentSpace(config, params, cfg.sample_posterior, cfg.decode_chunk)
    from models.autoencoder_weights import load_autoencoder  # noqa: PLC0415

    try:
        config, params = load_autoencoder(cfg.path)
    except (OSError, ValueError) as error:
        raise _config_error(cfg.path, error) from error
    return LatentSpace(config, params, cfg.sample_posterior, cfg.decode_chunk)


def _config_error(path: str, error: Exception) -> Exception:
    from errors import ConfigError  # noqa: PLC0415

    return ConfigError(f"autoencoder.path={path!r}: {error}")
