"""What a compiled program needs per device: XLA's memory analysis, libtpu's refusal when it
does not fit, and the time its cost analysis implies (training/compile_run.py reports them)."""

import re

import jax
import jax.numpy as jnp
import numpy as np


def shard_bytes(tree) -> int:
    """Bytes one device holds of an abstract tree whose leaves carry NamedShardings."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


def shape_only(tree):
    """Every leaf that is not already abstract as a ShapeDtypeStruct (its sharding left to jit)."""

    def one(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        return jax.eval_shape(lambda: leaf)

    return jax.tree.map(one, tree)


def compile_or_out_of_memory(lowered) -> tuple[jax.stages.Compiled | None, str]:
    """(compiled, "") or, when the TPU compiler finds the program does not fit, (None, why)."""
    try:
        return lowered.compile(), ""
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error) or OUT_OF_MEMORY.search(str(error)) is None:
            raise
        return None, str(error)


# libtpu: "... the total memory required for HLO temporaries (40.11G) exceeds available HBM
# (15.75G)." (jax 0.10.2 / libtpu 0.0.42.1)
OUT_OF_MEMORY = re.compile(r"temporaries \((\d+(?:\.\d+)?)([KMGT])\)")


def memory_from_error(error: str, arguments: int) -> dict[str, int]:
    """Per-device memory of a step the compiler refused: the temporaries its message gives and
    the arguments counted from the abstract state and batch."""
    value, unit = OUT_OF_MEMORY.search(error).groups()
    temporaries = int(float(value) * 2 ** (10 * ("KMGT".index(unit) + 1)))
    parts = {
        "arguments": arguments,
        "temporaries": temporaries,
        "outputs_not_aliased": 0,
        "generated_code": 0,
    }
    return {**parts, "peak": arguments + temporaries}


def peak_bytes(compiled: jax.stages.Compiled) -> dict[str, int]:
    """XLA's per-device memory analysis, and the peak its parts add up to."""
    memory = compiled.memory_analysis()
    parts = {
        "arguments": memory.argument_size_in_bytes,
        "temporaries": memory.temp_size_in_bytes,
        "outputs_not_aliased": memory.output_size_in_bytes - memory.alias_size_in_bytes,
        "generated_code": memory.generated_code_size_in_bytes,
    }
    return {**parts, "peak": sum(parts.values())}


def estimate_seconds(
    cost: dict[str, float], peak_flops: float, bandwidth: float
) -> tuple[float, str | None, float, float]:
    """(seconds, source, optimal_seconds, roofline seconds) of one compiled program per device.

    libtpu's `optimal_seconds` is negative for some programs (seen for U-Net train steps and
    every program with a loop, jax 0.10.2 / libtpu 0.0.42.1); then the time is the roofline of
    the compiler's own counts: the slower of its FLOPs at peak and its bytes at HBM bandwidth.
    Both are 0 on the CPU backend (no datasheet peak)."""
    if peak_flops <= 0 or bandwidth <= 0:
        return 0.0, None, 0.0, 0.0
    optimal = cost.get("optimal_seconds", 0.0)
    roofline = max(cost.get("flops", 0.0) / peak_flops, cost.get("bytes accessed", 0.0) / bandwidth)
    if optimal > 0:
        return optimal, "optimal_seconds", optimal, roofline
    return roofline, "roofline" if roofline > 0 else None, optimal, roofline
