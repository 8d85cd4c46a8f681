"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1 and
appendix G), as diffusers' `AutoencoderKL`, so Stable Diffusion (1.x, 2.x, XL) and SD3 / Flux
style VAE checkpoints load unchanged (`models/autoencoder_weights.py`).

The encoder maps images in [-1, 1] to a diagonal Gaussian posterior (mean, logvar); the decoder
maps latents back. Diffusion runs on `to_latent(z) = (z - shift_factor) * scaling_factor`, a
latent of roughly unit variance (Rombach et al. sec. 4.3.2). Images and latents are NHWC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import schema
from errors import ConfigError
from models import autoencoder_blocks as blocks
from models.functional import Params

# diffusers clamps the log-variance to this range (DiagonalGaussianDistribution).
LOGVAR_RANGE = (-30.0, 20.0)
DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"
ACTIVATIONS = ("silu", "swish")  # diffusers' names for the same SiLU
# Other config.json keys: checked (block types, latent statistics) or without effect here, as
# are diffusers' private "_..." keys (_class_name is checked).
_OTHER_KEYS = ("down_block_types", "up_block_types", "latents_mean", "latents_std", "force_upcast")
# AutoencoderKL.__init__'s defaults, for keys a config.json leaves out; these keys are the
# fields of AutoencoderConfig, named alike.
_DIFFUSERS_DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (64,),
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """diffusers' AutoencoderKL config (same field names); the defaults are Stable Diffusion
    1.x / 2.x's VAE, not AutoencoderKL's constructor defaults."""

    in_channels: int = schema.field(3, "Image channels.")
    out_channels: int = schema.field(3, "Decoded image channels.")
    latent_channels: int = schema.field(4, "Latent channels (4: SD 1.x-XL; 16: SD3, Flux).")
    block_out_channels: tuple[int, ...] = schema.field(
        (128, 256, 512, 512), "Width of each level; every level but the last halves H and W."
    )
    layers_per_block: int = schema.field(2, "Resnets per encoder level (decoder: one more).")
    norm_num_groups: int = schema.field(32, "GroupNorm groups.")
    act_fn: str = schema.field("silu", "Activation; only SiLU ('silu' or 'swish') exists.")
    sample_size: int | tuple[int, ...] = schema.field(512, "Training image size (metadata).")
    scaling_factor: float = schema.field(0.18215, "Latent scale: to_latent multiplies by it.")
    shift_factor: float = schema.field(0.0, "Latent shift, subtracted before scaling (SD3).")
    use_quant_conv: bool = schema.field(True, "1x1 conv on the encoder's moments.")
    use_post_quant_conv: bool = schema.field(True, "1x1 conv on latents before the decoder.")
    mid_block_add_attention: bool = schema.field(True, "Self-attention in the mid blocks.")

    @property
    def downsampling_factor(self) -> int:
        """Image size / latent size."""
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:
        """Raises ConfigError naming the bad field."""
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block"):
            schema.require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1.")
        widths = self.block_out_channels
        schema.require(
            len(widths) >= 1 and all(w >= 1 for w in widths),
            "block_out_channels",
            widths,
            "needs >= 1 positive widths.",
        )
        groups = self.norm_num_groups
        schema.require(
            groups >= 1 and all(w % groups == 0 for w in widths),
            "norm_num_groups",
            groups,
            f"must be >= 1 and divide every width of block_out_channels={widths}.",
        )
        schema.one_of("act_fn", self.act_fn, ACTIVATIONS)
        schema.require(
            self.scaling_factor != 0, "scaling_factor", self.scaling_factor, "must not be 0."
        )

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> AutoencoderConfig:
        """From an AutoencoderKL config.json dict; absent keys take AutoencoderKL's defaults."""
        config = {**_DIFFUSERS_DEFAULTS, **config}
        class_name = config.get("_class_name", "AutoencoderKL")
        if class_name != "AutoencoderKL":
            raise ConfigError(f"_class_name={class_name!r}: only AutoencoderKL is supported.")
        levels = len(config["block_out_channels"])
        for key, kind in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
            kinds = config.get(key, [kind] * levels)
            if any(k != kind for k in kinds) or len(kinds) != levels:
                raise ConfigError(
                    f"{key}={kinds!r}: only {kind!r} blocks are supported, one per entry of "
                    f"block_out_channels={config['block_out_channels']!r}."
                )
        for key in ("latents_mean", "latents_std"):
            if config.get(key) is not None:
                raise ConfigError(
                    f"{key}={config[key]!r}: per-channel latent statistics are not supported; "
                    "only scaling_factor and shift_factor."
                )
        unknown = sorted(
            key
            for key in config
            if key not in _DIFFUSERS_DEFAULTS and key not in _OTHER_KEYS and not key.startswith("_")
        )
        if unknown:
            raise ConfigError(f"Unknown AutoencoderKL config keys: {', '.join(unknown)}.")
        values = {key: config[key] for key in _DIFFUSERS_DEFAULTS}
        if values["shift_factor"] is None:
            values["shift_factor"] = 0.0
        return schema.build(cls, values, "")

    def to_diffusers(self) -> dict[str, Any]:
        """The config.json dict diffusers' AutoencoderKL.from_pretrained reads."""
        levels = len(self.block_out_channels)
        fields = schema.to_dict(self)
        return {
            "_class_name": "AutoencoderKL",
            **{key: list(v) if isinstance(v, tuple) else v for key, v in fields.items()},
            "down_block_types": [DOWN_BLOCK] * levels,
            "up_block_types": [UP_BLOCK] * levels,
            "force_upcast": True,
            "latents_mean": None,
            "latents_std": None,
        }


class AutoencoderKL(nnx.Module):
    """Encoder, decoder and the optional 1x1 quant convs; see the module docstring."""

    def __init__(self, config: AutoencoderConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        moments = 2 * config.latent_channels
        self.encoder = blocks.Encoder(config, rngs=rngs)
        self.decoder = blocks.Decoder(config, rngs=rngs)
        self.quant_conv = (
            blocks.conv(moments, moments, kernel=1, rngs=rngs) if config.use_quant_conv else None
        )
        self.post_quant_conv = (
            blocks.conv(config.latent_channels, config.latent_channels, kernel=1, rngs=rngs)
            if config.use_post_quant_conv
            else None
        )

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images [B, H, W, in_channels] in [-1, 1] -> posterior (mean, logvar), each
        [B, H/f, W/f, latent_channels] with logvar clipped to LOGVAR_RANGE."""
        with jax.named_scope("vae_encode"):
            moments = self.encoder(images.astype(jnp.float32))
            if self.quant_conv is not None:
                moments = self.quant_conv(moments)
            mean, logvar = jnp.split(moments, 2, axis=-1)
            return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, latents: jax.Array) -> jax.Array:
        """Unscaled latents z [B, h, w, latent_channels] -> images [B, h*f, w*f, out_channels]."""
        with jax.named_scope("vae_decode"):
            z = latents.astype(jnp.float32)
            if self.post_quant_conv is not None:
                z = self.post_quant_conv(z)
            return self.decoder(z)

    def __call__(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Reconstruction through a posterior sample (with `key`) or its mode (without)."""
        mean, logvar = self.encode(images)
        z = posterior_mode(mean, logvar) if key is None else posterior_sample(mean, logvar, key)
        return self.decode(z)


def build_autoencoder(config: AutoencoderConfig) -> Callable[[nnx.Rngs], AutoencoderKL]:
    """A builder `rngs -> AutoencoderKL` for functionalize / init_params."""
    return lambda rngs: AutoencoderKL(config, rngs=rngs)


def bind(config: AutoencoderConfig, params: Params) -> AutoencoderKL:
    """The network over a plain params dict, e.g. `bind(config, params).encode(images)`;
    call it inside jit, where tracing the (abstract) graph happens once per compile."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.State(params))


def posterior_sample(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) drawn from `key` (reparameterised)."""
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


def posterior_mode(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """The posterior's mode, its mean."""
    del logvar
    return mean


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over H, W, C: [B] (diffusers' `kl()`)."""
    terms = jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar
    return 0.5 * jnp.sum(terms, axis=tuple(range(1, mean.ndim)))


def to_latent(z: jax.Array, config: AutoencoderConfig) -> jax.Array:
    """Autoencoder latent z -> the diffusion model's latent (z - shift) * scale."""
    return (z - config.shift_factor) * config.scaling_factor


def from_latent(latents: jax.Array, config: AutoencoderConfig) -> jax.Array:
    """The diffusion model's latent -> autoencoder latent z (inverse of `to_latent`)."""
    return latents / config.scaling_factor + config.shift_factor
