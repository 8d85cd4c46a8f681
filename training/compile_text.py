"""--mode=compile's report as text, and the collectives it reads from compiled HLO."""

from __future__ import annotations

import collections
import re

import numpy as np

# XLA's collective ops as they appear in compiled HLO text ("-start" for the async forms).
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_HLO_OP = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(",
    re.MULTILINE,
)
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")


def collectives(hlo_text: str) -> dict[str, dict[str, float]]:
    """{op: {"count", "bytes"}} of the collectives in compiled HLO (bytes of their results)."""
    found: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for shape_text, op in _HLO_OP.findall(hlo_text):
        size = 0
        for dtype, dims in _ARRAY.findall(shape_text):
            if dtype == "token":
                continue
            count = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            size += count * _itemsize(dtype)
        found[op]["count"] += 1
        found[op]["bytes"] += size
    return dict(found)


def _itemsize(hlo_dtype: str) -> int:
    bits = re.search(r"(\d+)$", hlo_dtype)
    if hlo_dtype == "pred":
        return 1
    return max(1, int(bits.group(1)) // 8) if bits else 4


def format_report(report: dict[str, object]) -> str:
    """The report as a few readable lines."""
    memory = report["per_device_mib"]
    lines = [
        f"{report['topology']} x{report['num_slices']}: {report['chips']} chips, "
        f"{report['devices']} devices ({report['device_kind']}), {report['hosts']} hosts, "
        f"mesh {report['mesh']}, batch {report['batch_size']}, "
        f"{report['params'] / 1e6:.1f}M params",
        f"per device: params {memory['params']:.1f} + EMA {memory['ema_params']:.1f} + optimizer "
        f"{memory['optimizer_state']:.1f} + batch {memory['batch']:.1f} MiB; XLA: arguments "
        f"{memory['arguments']:.1f}, temporaries {memory['temporaries']:.1f}, outputs "
        f"{memory['outputs_not_aliased']:.1f}, code {memory['generated_code']:.1f} -> peak "
        f"{memory['peak']:.1f} of {memory['hbm']:.0f} MiB HBM: "
        + ("fits" if report["fits"] else "DOES NOT FIT"),
    ]
    if report["compiler_error"]:
        lines.append(f"the TPU compiler refused the step: {report['compiler_error']}")
    if report["estimate_source"]:
        twin = " (of the loop-free twin)" if report["estimated_from_loop_free_twin"] else ""
        source = {
            "optimal_seconds": "the compiler's optimal_seconds",
            "roofline": "the roofline of its FLOPs and bytes (no usable optimal_seconds)",
        }[report["estimate_source"]]
        lines.append(
            f"compiler estimate{twin}: {report['flops_per_device'] / 1e9:.2f} GFLOP and "
            f"{report['bytes_accessed_per_device'] / 2**30:.2f} GiB accessed per device, step "
            f"{report['estimated_step_seconds'] * 1e3:.2f} ms from {source} -> "
            f"{report['estimated_images_per_second']:.0f} images/s, MFU "
            f"{100 * report['estimated_mfu']:.1f}% of {report['model_flops_per_image'] / 1e9:.2f} "
            "model GFLOP per image (estimates, not measurements)"
        )
    chain = report.get("sampler")
    if chain:
        line = (
            f"sampler {chain['sampler']} x{chain['num_steps']} steps "
            f"({chain['network_evaluations']} evaluations, {chain['images']} images): peak "
            f"{chain['per_device_mib']['peak']:.1f} MiB per device, "
            + ("fits" if chain["fits"] else "DOES NOT FIT")
        )
        if chain.get("estimated_chain_seconds"):
            line += (
                f"; estimated {chain['estimated_chain_seconds'] * 1e3:.1f} ms per chain -> "
                f"{chain['estimated_images_per_second']:.1f} images/s"
            )
        lines.append(line)
    elif report.get("sampler_not_compiled"):
        lines.append(f"sampler chain not compiled: {report['sampler_not_compiled']}")
    ops = ", ".join(
        f"{op} x{found['count']} ({found['bytes'] / 2**20:.1f} MiB)"
        for op, found in report["collectives"].items()
    )
    lines.append(f"collectives: {ops or 'none'}")
    return "\n".join(lines)
