"""Convolutions as matrix products where XLA:CPU's convolution kernels are slow.

`conv_general_dilated` has `lax.conv_general_dilated`'s signature (it is passed to `nnx.Conv`),
so parameters, shapes and results do not change, only how the work is done:
  - a 1x1 convolution is a matmul over the channels, forward and backward;
  - a 3x3 'SAME' stride-1 convolution keeps XLA's forward and input gradient (both run near the
    matmul peak on CPU) but computes its kernel gradient as nine shifted matmuls,
        dK[i, j] = sum_{b, h, w} x_pad[b, h + i, w + j, :]^T dY[b, h, w, :],
    accumulated in a `lax.scan` over slabs of the batch so each slab's shifted copies stay in
    cache. XLA:CPU's own kernel gradient runs at a third of the forward's speed at 32 x 32
    (docs/PERFORMANCE.md, "Convolution kernel gradients on CPU"); below 32 x 32 it is kept.
Any other convolution goes to `lax.conv_general_dilated` unchanged. On GPU / TPU keep
`model.conv_impl='xla'`: cuDNN and the TPU convolution units have no such gap.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from models import logical

NHWC = ("NHWC", "HWIO", "NHWC")
SAME_3X3 = ((1, 1), (1, 1))
UNPADDED_1X1 = ("SAME", "VALID", ((0, 0), (0, 0)))  # a 1x1 stride-1 conv pads nothing
MIN_SHIFTED_POSITIONS = 32 * 32  # below this XLA's kernel gradient is as fast (measured)
SLAB_POSITIONS = 2048  # pixels per device per scan step: the shifted copies stay in cache


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    **kwargs,
) -> jax.Array:
    """`lax.conv_general_dilated`, with 1x1 and 3x3 'SAME' NHWC convolutions done as matmuls
    where that is faster on CPU (see the module docstring)."""
    plain = (
        lhs.ndim == 4
        and tuple(window_strides) == (1, 1)
        and _is_unit(lhs_dilation)
        and _is_unit(rhs_dilation)
        and feature_group_count == 1
        and preferred_element_type is None
        and not kwargs.get("out_sharding")
        and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape)
    )
    kernel_size = tuple(rhs.shape[:2])
    if plain and kernel_size == (1, 1) and _padding_pairs(padding) in UNPADDED_1X1:
        return pointwise_conv(lhs, rhs, precision)
    if plain and kernel_size == (3, 3) and _padding_pairs(padding) in ("SAME", SAME_3X3):
        return conv3x3_same(lhs, rhs, precision)
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
        **kwargs,
    )


def pointwise_conv(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """A 1x1 convolution [B, H, W, C] x [1, 1, C, O] as one matmul over the channels."""
    return jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0], precision=precision)


def xla_conv3x3(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """XLA's 3x3 'SAME' stride-1 NHWC convolution."""
    return lax.conv_general_dilated(
        x, kernel, (1, 1), SAME_3X3, dimension_numbers=NHWC, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3_same(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """A 3x3 'SAME' stride-1 NHWC convolution whose kernel gradient is shifted matmuls."""
    return xla_conv3x3(x, kernel, precision)


def _conv3x3_forward(x, kernel, precision):
    return xla_conv3x3(x, kernel, precision), (x, kernel)


def _conv3x3_backward(precision, residuals, grad_out):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda inputs: xla_conv3x3(inputs, kernel, precision), x)
    (grad_x,) = input_vjp(grad_out)
    if x.shape[1] * x.shape[2] >= MIN_SHIFTED_POSITIONS:
        grad_kernel = shifted_kernel_gradient(x, grad_out, precision).astype(kernel.dtype)
    else:
        _, kernel_vjp = jax.vjp(lambda k: xla_conv3x3(x, k, precision), kernel)
        (grad_kernel,) = kernel_vjp(grad_out)
    return grad_x, grad_kernel


conv3x3_same.defvjp(_conv3x3_forward, _conv3x3_backward)


def shifted_kernel_gradient(x: jax.Array, grad_out: jax.Array, precision=None) -> jax.Array:
    """dL/dK [3, 3, C, O] of a 3x3 'SAME' convolution from its input x [B, H, W, C] and output
    gradient [B, H, W, O]: nine shifted matmuls, summed over the batch in a scan over slabs.

    The batch is viewed as [groups, steps, slab]: `groups` is how many ways the caller's mesh
    splits the batch (`logical.split_count`), so every slab is local to its device and the
    [groups, 9, C, O] partial sums meet in one reduction at the end.
    """
    batch, height, width, channels = x.shape
    out_channels = grad_out.shape[-1]
    groups = logical.split_count("batch", batch)
    per_group = batch // groups
    slab = _largest_divisor_at_most(per_group, max(1, SLAB_POSITIONS // (height * width)))
    steps = per_group // slab
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))

    def by_step(a: jax.Array) -> jax.Array:
        """[B, ...] -> [steps, groups, slab, ...], the scan axis first."""
        return jnp.swapaxes(a.reshape(groups, steps, slab, *a.shape[1:]), 0, 1)

    def accumulate(total: jax.Array, slabs: tuple[jax.Array, jax.Array]):
        x_slab, g_slab = slabs  # [groups, slab, H + 2, W + 2, C], [groups, slab, H, W, O]
        g_rows = g_slab.reshape(groups, slab * height * width, out_channels)
        taps = [
            jnp.einsum(
                "gnc,gno->gco",
                x_slab[:, :, i : i + height, j : j + width, :].reshape(groups, -1, channels),
                g_rows,
                precision=precision,
                preferred_element_type=jnp.float32,
            )
            for i in range(3)
            for j in range(3)
        ]
        return total + jnp.stack(taps, axis=1), None

    initial = jnp.zeros((groups, 9, channels, out_channels), jnp.float32)
    total, _ = lax.scan(accumulate, initial, (by_step(padded), by_step(grad_out)))
    return total.sum(axis=0).reshape(3, 3, channels, out_channels)


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _is_unit(dilation) -> bool:
    return dilation is None or all(d == 1 for d in dilation)


def _padding_pairs(padding):
    return padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)


def _is_nhwc(dimension_numbers, lhs_shape, rhs_shape) -> bool:
    if dimension_numbers is None:
        return False
    expected = lax.conv_dimension_numbers(lhs_shape, rhs_shape, NHWC)
    given = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    return given == expected
