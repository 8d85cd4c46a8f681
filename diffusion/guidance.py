"""Classifier-free guidance (Ho & Salimans 2022), guidance rescale and x0 thresholding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

THRESHOLDINGS = ("none", "static", "dynamic")

# model_fn(x_t [B, ...], t [B], cond) -> output [B, ...]; cond is any pytree with batch-leading
# leaves (class labels, text embeddings and masks, ...) or None.
CondModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def _per_example_std(x: jax.Array) -> jax.Array:
    return jnp.std(x, axis=tuple(range(1, x.ndim)), keepdims=True)


def combine(
    cond_out: jax.Array, uncond_out: jax.Array, scale: jax.Array, rescale: jax.Array
) -> jax.Array:
    """uncond + scale (cond - uncond), then Lin et al. 2023 (eq. 15-16) std rescaling by `rescale`.

    Rescaling pulls the per-example std of the guided output back to that of the conditional one,
    which counters over-exposure at large scales; rescale = 0 is plain CFG.
    """
    guided = uncond_out + scale * (cond_out - uncond_out)
    rescaled = guided * (_per_example_std(cond_out) / _per_example_std(guided))
    return rescale * rescaled + (1.0 - rescale) * guided


def guided_model(
    model_fn: CondModelFn,
    cond: Any,
    uncond: Any,
    scale: jax.Array,
    rescale: jax.Array,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A model of (x, t) that runs both branches in one batched call and combines them.

    `uncond` is the null condition or a negative prompt; it must have the same structure and
    shapes as `cond`.
    """

    def guided(x: jax.Array, t: jax.Array) -> jax.Array:
        both = jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, uncond)
        out = model_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), both)
        cond_out, uncond_out = jnp.split(out, 2, axis=0)
        return combine(cond_out, uncond_out, scale, rescale)

    return guided


def threshold_x0(x0: jax.Array, mode: str, percentile: float = 0.995) -> jax.Array:
    """Static clipping to [-1, 1], or Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3).

    Dynamic: s = max(1, the `percentile` quantile of |x0| per example); clip to [-s, s], then / s.
    """
    if mode == "none":
        return x0
    if mode == "static":
        return jnp.clip(x0, -1.0, 1.0)
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -s, s) / s


def validate_thresholding(mode: str, percentile: float) -> None:
    """Raises ValueError for an unknown thresholding mode or a percentile outside (0, 1]."""
    if mode not in THRESHOLDINGS:
        raise ValueError(f"thresholding={mode!r} is not known; allowed: {', '.join(THRESHOLDINGS)}")
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic_percentile={percentile} must be in (0, 1].")
