"""3x3 and 1x1 convolution gradients on this machine: XLA's own against models/conv.py's matmuls.

    python benchmarks/conv_gradients.py                 # the CIFAR U-Net's conv shapes, batch 8
    python benchmarks/conv_gradients.py --batch=32 --repeats=3

For each (side, in -> out channels, kernel) the U-Net uses, prints the best-of-N milliseconds of
the forward conv, the kernel gradient alone (XLA's transposed convolution vs
`conv.shifted_kernel_gradient` / a matmul for 1x1) and the whole gradient to input and kernel of
sum(conv(x, k) * g) with `model.conv_impl` "xla" and "dots", and the ratio. `conv.py` takes the
shifted path only from `conv.MIN_SHIFTED_POSITIONS` pixels up; the rows below it show why.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.contention import fmt_load, fmt_wait, waited  # noqa: E402
from benchmarks.peak import best_seconds  # noqa: E402
from models import conv  # noqa: E402

# (side, in channels, out channels, kernel) of the CIFAR U-Net (base 128, mult 1, 2, 2, 2).
UNET_SHAPES = (
    (32, 128, 128, 3),
    (32, 256, 128, 3),
    (32, 384, 128, 3),
    (32, 256, 256, 3),  # the last upsampler's conv
    (16, 256, 256, 3),
    (16, 512, 256, 3),
    (8, 256, 256, 3),
    (4, 256, 256, 3),
    (32, 384, 128, 1),
    (16, 512, 256, 1),
)


def conv_fn(impl: str):
    """The `model.conv_impl` convolution, as flax calls it (NHWC, stride 1, 'SAME')."""
    lax_conv = lax.conv_general_dilated if impl == "xla" else conv.conv_general_dilated

    def apply(x: jax.Array, kernel: jax.Array) -> jax.Array:
        numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, conv.NHWC)
        return lax_conv(x, kernel, (1, 1), "SAME", dimension_numbers=numbers)

    return apply


def row(batch: int, side: int, channels: int, out_channels: int, kernel_size: int, repeats: int):
    """Milliseconds: forward, kernel gradient (xla, dots), full gradient (xla, dots)."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (batch, side, side, channels))
    kernel = 0.05 * jax.random.normal(keys[1], (kernel_size, kernel_size, channels, out_channels))
    grad_out = jax.random.normal(keys[2], (batch, side, side, out_channels))
    forward = jax.jit(conv_fn("xla"))

    def kernel_grad(impl):
        def grad(x, g):
            return jax.vjp(lambda k: conv_fn(impl)(x, k), kernel)[1](g)[0]

        return jax.jit(grad)

    def full_grad(impl):
        return jax.jit(jax.grad(lambda x, k: jnp.sum(conv_fn(impl)(x, k) * grad_out), (0, 1)))

    def ms(fn, *args):
        return 1e3 * best_seconds(fn, args, repeats)

    return (
        ms(forward, x, kernel),
        ms(kernel_grad("xla"), x, grad_out),
        ms(kernel_grad("dots"), x, grad_out),
        ms(full_grad("xla"), x, kernel),
        ms(full_grad("dots"), x, kernel),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="best of")
    args = parser.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    device = jax.devices()[0].device_kind
    print(f"device: {device}, {os.cpu_count()} host cores, jax {jax.__version__}")
    print(f"\n3x3 / 1x1 'SAME' conv, batch {args.batch}, best of {args.repeats}, ms\n")
    print(
        "| side | in -> out | k | forward | kernel grad xla | kernel grad dots | "
        "grad xla | grad dots | grad xla / dots | load avg | CPU wait |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for shape in UNET_SHAPES:
        side, channels, out_channels, kernel_size = shape
        times, wait = waited(lambda shape=shape: row(args.batch, *shape, args.repeats))
        cells = " | ".join(f"{t:.1f}" for t in times)
        print(
            f"| {side} | {channels} -> {out_channels} | {kernel_size} | {cells} | "
            f"{times[3] / times[4]:.2f} | {fmt_load(os.getloadavg())} | {fmt_wait(wait)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
