"""Peak FLOP/s to measure model FLOPs utilisation (MFU) against, and XLA's FLOP count.

    python benchmarks/peak.py                       # measured matmul and 3x3 conv peak, float32
    python benchmarks/peak.py --dtype=bfloat16

On CPU the peak is measured: the best of 5 timed calls (after a warm-up) of a large jitted
matmul and a large jitted 3x3 convolution on random data in the given dtype; the larger of the
two is the peak. On GPU / TPU it is the datasheet's dense bf16 figure for `device_kind` (the
measured figures are printed beside it); `--peak_flops` in the benchmarks overrides both.
FLOPs are counted as XLA's cost analysis counts them (`flops` of `compiled.cost_analysis()`):
2 per multiply-add, and a convolution's padded taps are not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Dense bf16 datasheet peaks per device: (substring of device_kind, name, FLOP/s). First match
# wins, so the more specific TPU names ("v5 lite" = v5e, "v6 lite" = v6e) come before "v5".
DATASHEET_PEAKS: tuple[tuple[str, str, float], ...] = (
    ("h100", "H100 SXM", 989e12),
    ("h200", "H200", 989e12),
    ("a100", "A100", 312e12),
    ("v5 lite", "TPU v5e", 197e12),
    ("v5e", "TPU v5e", 197e12),
    ("v6 lite", "TPU v6e", 918e12),
    ("v6e", "TPU v6e", 918e12),
    ("v5p", "TPU v5p", 459e12),
    ("v5", "TPU v5p", 459e12),
    ("v4", "TPU v4", 275e12),
)


@dataclasses.dataclass(frozen=True)
class Peak:
    """The FLOP/s MFU is taken against, where it came from, and the two measured figures."""

    flops_per_s: float
    source: str  # e.g. "measured: matmul" or "datasheet bf16 dense: H100 SXM"
    matmul_flops_per_s: float
    conv_flops_per_s: float


def cost_flops(compiled: jax.stages.Compiled) -> float:
    """`flops` of XLA's cost analysis of one compiled program (per device under SPMD).

    XLA counts a while loop's body once, not once per trip: a `lax.scan` over 12 blocks is
    counted as one block (see `has_loops`).
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older JAX: one dict per program
        analysis = analysis[0]
    return float(analysis["flops"])


def has_loops(compiled: jax.stages.Compiled) -> bool:
    """Whether the optimised HLO has a while loop (whose FLOPs cost analysis counts once)."""
    return " while(" in compiled.as_text()


def matmul_flops(m: int, k: int, n: int) -> float:
    """FLOPs of [m, k] @ [k, n]: one multiply and one add per term."""
    return 2.0 * m * k * n


def conv3x3_same_flops(batch: int, height: int, width: int, c_in: int, c_out: int) -> float:
    """FLOPs of a stride-1 3x3 'SAME' convolution as XLA counts them (padded taps excluded).

    Along one axis of length L the 3 taps of L outputs reach 3L - 2 real pixels.
    """
    return 2.0 * batch * c_in * c_out * (3 * height - 2) * (3 * width - 2)


def best_seconds(fn: Callable, args: tuple, repeats: int = 5) -> float:
    """Least wall time of `fn(*args)`, blocked until ready, over `repeats` calls after warm-up."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """[B, H, W, Cin] * [3, 3, Cin, Cout] -> [B, H, W, Cout], stride 1, 'SAME'."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def default_sizes(platform: str) -> tuple[int, tuple[int, int, int]]:
    """(matmul side, (batch, spatial side, channels) of the conv) large enough to saturate."""
    if platform == "cpu":
        return 2048, (8, 32, 256)
    return 8192, (64, 64, 512)


def measure_matmul(side: int, dtype: jnp.dtype, repeats: int = 5) -> float:
    """FLOP/s of a jitted [side, side] @ [side, side] in `dtype` on random data (best time)."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (side, side), dtype)
    b = jax.random.normal(kb, (side, side), dtype)
    compiled = jax.jit(jnp.matmul).lower(a, b).compile()
    return cost_flops(compiled) / best_seconds(compiled, (a, b), repeats)


def measure_conv(batch: int, side: int, channels: int, dtype: jnp.dtype, repeats: int = 5) -> float:
    """FLOP/s of a jitted 3x3 conv, channels -> channels at side x side, on random data."""
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch, side, side, channels), dtype)  # [B, H, W, C]
    kernel = jax.random.normal(kw, (3, 3, channels, channels), dtype) * 0.05
    compiled = jax.jit(conv3x3).lower(x, kernel).compile()
    return cost_flops(compiled) / best_seconds(compiled, (x, kernel), repeats)


def datasheet_peak(device_kind: str) -> tuple[str, float] | None:
    """(name, dense bf16 FLOP/s) of a known accelerator, or None."""
    kind = device_kind.lower()
    for key, name, flops in DATASHEET_PEAKS:
        if key in kind:
            return name, flops
    return None


def peak_flops(dtype: str, override: float | None = None, repeats: int = 5) -> Peak:
    """Per-device peak FLOP/s for `dtype`: `override`, else datasheet (GPU / TPU), else measured."""
    device = jax.devices()[0]
    side, (batch, conv_side, channels) = default_sizes(device.platform)
    matmul = measure_matmul(side, jnp.dtype(dtype), repeats)
    conv = measure_conv(batch, conv_side, channels, jnp.dtype(dtype), repeats)
    measured = max(matmul, conv)
    if override:
        return Peak(override, "--peak_flops", matmul, conv)
    sheet = datasheet_peak(device.device_kind) if device.platform != "cpu" else None
    if sheet is not None:
        return Peak(sheet[1], f"datasheet bf16 dense: {sheet[0]}", matmul, conv)
    which = "matmul" if matmul >= conv else "3x3 conv"
    return Peak(measured, f"measured ({which}, {dtype}, best of {repeats})", matmul, conv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"device: {device.device_kind} x{jax.device_count()}, {os.cpu_count()} host cores")
    side, conv = default_sizes(device.platform)
    print(f"matmul {side}x{side}x{side}; conv 3x3 batch {conv[0]}, {conv[1]}x{conv[1]}x{conv[2]}")
    print(
        "| dtype | matmul TFLOP/s | 3x3 conv TFLOP/s | peak TFLOP/s | source |"
        " load avg 1/5/15 min |"
    )
    print("|---|---:|---:|---:|---|---|")
    for dtype in args.dtype.split(","):
        peak = peak_flops(dtype, repeats=args.repeats)
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"| {dtype} | {peak.matmul_flops_per_s / 1e12:.3f} | {peak.conv_flops_per_s / 1e12:.3f}"
            f" | {peak.flops_per_s / 1e12:.3f} | {peak.source} | {load} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
