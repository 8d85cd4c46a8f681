"""CPU contention readings for benchmarks on a shared machine: Linux PSI stall time, load
averages, and small formatting helpers, so a figure can be printed next to how busy the box was."""

from __future__ import annotations

import time
from collections.abc import Callable


def cpu_stall_us() -> int | None:
    """Microseconds some runnable task has waited for a CPU since boot (Linux PSI), or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def waited(fn: Callable[[], object]) -> tuple[object, float | None]:
    """`fn()` and the share of its wall time some task waited for a CPU (None: no PSI)."""
    stall, start = cpu_stall_us(), time.perf_counter()
    out = fn()
    wall, stall_end = time.perf_counter() - start, cpu_stall_us()
    return out, None if stall is None else (stall_end - stall) / 1e6 / wall


def fmt_wait(pressure: float | None) -> str:
    return "-" if pressure is None else f"{100 * pressure:.0f}%"


def fmt_seconds(seconds: list[float]) -> str:
    return " ".join(f"{s:.3f}" for s in seconds) + " s"


def fmt_load(load: tuple[float, ...]) -> str:
    return "/".join(f"{x:.2f}" for x in load)
