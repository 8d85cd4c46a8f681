"""TPU slices a run can be compiled for without the hardware (`--mode=compile`), and their chips.

Topology names are JAX's (`jax.experimental.topologies`): generation, then chips per dimension,
e.g. "v5e:4x4" (16 chips), "v4:2x2x4", "v5p:4x4x4", "v6e:2x4"; Cloud slice names ("v5e-64",
"v5litepod-16", "v4-32", "v5p-128", "v6e-8") are accepted too. Chip figures are the Cloud TPU
datasheets' (HBM per chip, peak dense bf16 FLOP/s and HBM bandwidth per chip).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

from schema import fail, field, require

GENERATIONS = ("v4", "v5e", "v5p", "v6e")
INSTALL_HINT = "pip install 'jax[tpu]==0.10.2' (brings libtpu; requirements-tpu.txt)"


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip: its memory and peak dense bf16 throughput."""

    generation: str
    hbm_bytes: int
    peak_bf16_flops: float
    hbm_bytes_per_second: float = 0.0


CHIPS = {
    "v4": Chip("v4", 32 * 2**30, 275e12, 1228e9),
    "v5e": Chip("v5e", 16 * 2**30, 197e12, 819e9),
    "v5p": Chip("v5p", 95 * 2**30, 459e12, 2765e9),
    "v6e": Chip("v6e", 32 * 2**30, 918e12, 1640e9),
}
# Cloud names count TensorCores for v4 / v5p (two per chip) and chips for v5e / v6e.
_CORES_PER_CHIP_IN_NAME = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
# v4 / v5p slices: chips -> the 3-D grid Cloud TPU builds for that many.
_CUBES = {
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8",
    1024: "8x8x16",
    2048: "8x16x16",
    4096: "16x16x16",
}
_JAX_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")
_CLOUD_NAME = re.compile(r"^(v4|v5e|v5litepod|v5p|v6e)-(\d+)$")


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    """`config.compile`: the TPU slice --mode=compile builds the run for (no TPU needed)."""

    topology: str = field(
        "v5e:2x2",
        "JAX topology ('v5e:4x4', 'v4:2x2x4', 'v5p:4x4x4', 'v6e:2x4') or Cloud slice name "
        "('v5e-64', 'v4-32', 'v5p-128').",
    )
    num_slices: int = field(1, "Slices joined over the data-centre network (multi-slice).")

    def validate(self) -> None:
        resolve(self.topology)
        require(self.num_slices >= 1, "compile.num_slices", self.num_slices, "must be >= 1.")


def resolve(topology: str) -> tuple[str, Chip]:
    """(JAX topology name, chip) for a JAX or Cloud name; ConfigError listing the forms."""
    name = topology.strip().lower()
    cloud = _CLOUD_NAME.match(name)
    if cloud:
        generation = "v5e" if cloud.group(1) == "v5litepod" else cloud.group(1)
        chips = int(cloud.group(2)) // _CORES_PER_CHIP_IN_NAME[generation]
        name = f"{generation}:{_grid(generation, chips, topology)}"
    match = _JAX_NAME.match(name)
    if not match:
        fail(
            "compile.topology",
            topology,
            f"is not a TPU topology; use GENERATION:AxB[xC] with GENERATION in "
            f"{', '.join(GENERATIONS)} (e.g. v5e:4x4, v4:2x2x4) or a Cloud slice name (v5e-64, "
            "v4-32, v5p-128, v6e-8).",
        )
    return name, CHIPS[match.group(1)]


def _grid(generation: str, chips: int, given: str) -> str:
    """The chip grid of a Cloud slice: 2-D for v5e / v6e, 3-D (2x2xN or cubes) for v4 / v5p."""
    if chips < 1:
        fail("compile.topology", given, "names a slice with no whole chip.")
    if generation in ("v5e", "v6e"):
        side = 2 ** (int(math.log2(chips)) // 2)
        if side * side == chips:
            return f"{side}x{side}"
        if chips == 2 * side * side:
            return f"{side}x{2 * side}"
        fail("compile.topology", given, "is not a v5e / v6e slice size (1, 4, 8, ..., 256).")
    grid = _CUBES.get(chips)
    if grid is None:
        fail(
            "compile.topology",
            given,
            f"is not a {generation} slice size ({', '.join(map(str, _CUBES))} chips).",
        )
    return grid


def topology_devices(topology: str, num_slices: int = 1) -> list:
    """The devices of the slice(s), for jit to compile against; needs libtpu, not a TPU."""
    name, _ = resolve(topology)
    if importlib.util.find_spec("libtpu") is None:
        raise ModuleNotFoundError(
            f"--mode=compile for compile.topology={topology!r} needs libtpu: {INSTALL_HINT}."
        )
    # libtpu takes a lock file so that one process owns the TPU; compiling needs no TPU, so
    # several processes (tests, a second terminal) may load it. TPU_WORKER_HOSTNAMES silences
    # its warnings about the workers of a slice it is not running on.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    from jax.experimental import topologies  # noqa: PLC0415

    description = topologies.get_topology_desc(
        platform="tpu", topology_name=name, num_slices=num_slices
    )
    return list(description.devices)
