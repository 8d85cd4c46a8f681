"""Where a sampler evaluates the network: timesteps and sigmas for a given number of steps.

Sigmas are noise-to-signal ratios sigma = sqrt((1 - alpha_bar) / alpha_bar) (the "VE" view of a
VP model, Karras et al. 2022 sec. 2). A grid of n steps holds n model timesteps (possibly
fractional) and n + 1 sigmas ending in 0 (or at the schedule's first level, for DDIM as diffusers
runs it with set_alpha_to_one=False); a flow grid's "sigmas" are flow times t (see processes.py
for both views). Grids are built on the host in float64 and padded to a fixed
length so that different step counts share one compiled sampler.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import processes
from diffusion.schedules import NoiseSchedule

SPACINGS = ("linspace", "leading", "trailing", "karras", "logsnr", "edm")
SIGMA_SPACINGS = ("karras", "logsnr", "edm")  # placed in sigma over the schedule's range
KARRAS_RHO = 7.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Grid:
    """Per-step arrays of length max_steps; entries past `num_steps` are inactive padding."""

    timesteps: jax.Array  # [S] model timestep at step i
    sigmas: jax.Array  # [S] sigma at step i
    sigmas_next: jax.Array  # [S] sigma after step i (0 after the last step)
    steps_left: jax.Array  # [S] int32: n - i for active steps, 0 for padding
    extras: dict[str, jax.Array]  # [S, ...] rows only some samplers need (LMS weights, ...)

    @property
    def max_steps(self) -> int:
        return int(self.timesteps.shape[0])


def validate_spacing(spacing: str) -> None:
    """Raises ValueError when `spacing` is unknown."""
    if spacing not in SPACINGS:
        raise ValueError(f"spacing={spacing!r} is not known; allowed: {', '.join(SPACINGS)}")


def train_sigmas(schedule: NoiseSchedule) -> np.ndarray:
    """sigma at every training timestep, float64 [T]."""
    alphas_cumprod = np.asarray(schedule.alphas_cumprod, np.float64)
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = KARRAS_RHO):
    """Karras et al. 2022 eq. 5: sigmas evenly spaced in sigma^(1/rho), from max down to min."""
    ramp = np.linspace(0.0, 1.0, num_steps)
    inv_max, inv_min = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho


def log_snr_sigmas(sigma_min: float, sigma_max: float, num_steps: int) -> np.ndarray:
    """Sigmas evenly spaced in the log-SNR lambda = -log(sigma), from max down to min (the step
    DPM-Solver takes as uniform, Lu et al. 2022 sec. 3.3; diffusers' "exponential" sigmas)."""
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_steps))


def validate_custom_sigmas(sigmas: np.ndarray, schedule: NoiseSchedule) -> None:
    """Raises ValueError unless `sigmas` are the active levels of a grid: finite, strictly
    decreasing, inside the schedule's [sigma_min, sigma_max] (the network saw nothing else)."""
    sigmas = np.asarray(sigmas, np.float64)
    schedule_sigmas = train_sigmas(schedule)
    low, high = schedule_sigmas[0] * (1 - 1e-6), schedule_sigmas[-1] * (1 + 1e-6)
    if sigmas.ndim != 1 or len(sigmas) < 1 or not np.all(np.isfinite(sigmas)):
        raise ValueError(f"grid sigmas must be a non-empty list of finite numbers, got {sigmas}")
    if np.any(np.diff(sigmas) >= 0):
        raise ValueError(f"grid sigmas must decrease strictly, got {sigmas.tolist()}")
    if sigmas[0] > high or sigmas[-1] < low:
        raise ValueError(
            f"grid sigmas span [{sigmas[-1]:.4g}, {sigmas[0]:.4g}], outside the schedule's "
            f"[{schedule_sigmas[0]:.4g}, {schedule_sigmas[-1]:.4g}]"
        )


def sigma_to_timestep(sigmas: np.ndarray, schedule_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timesteps whose log-sigma, interpolated linearly, equals log(sigmas)."""
    log_sigmas = np.log(schedule_sigmas)
    return np.interp(np.log(np.maximum(sigmas, 1e-10)), log_sigmas, np.arange(len(log_sigmas)))


def spaced_timesteps(
    num_timesteps: int,
    num_steps: int,
    spacing: str,
    *,
    skip_zero: bool = False,
    steps_offset: int = 0,
) -> np.ndarray:
    """Decreasing timesteps for the spacings of Lin et al. 2024 (table 2), float64 [n].

    `skip_zero` is the multistep solvers' convention (DPM-Solver++, UniPC; diffusers does the
    same): linspace / leading place n + 1 integer points and drop t = 0, so the last step goes
    straight to sigma = 0 instead of taking a tiny step from t = 0 after a long one.
    `steps_offset` shifts "leading" timesteps up (diffusers' steps_offset; Stable Diffusion's
    configs use 1); the other spacings ignore it, as diffusers' schedulers do.
    """
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
        raise ValueError(f"steps_offset={steps_offset!r} must be an integer >= 0")
    if skip_zero and spacing in ("leading", "linspace"):
        if spacing == "leading":
            points = np.arange(num_steps + 1) * (num_timesteps // (num_steps + 1))
        else:
            points = np.linspace(0, num_timesteps - 1, num_steps + 1)
        steps = np.round(points).astype(np.float64)[::-1][:-1].copy()
    elif spacing == "leading":
        steps = np.round(np.arange(num_steps) * (num_timesteps // num_steps))
    elif spacing == "trailing":
        steps = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)) - 1
    else:  # linspace (and the end points of karras)
        steps = np.linspace(0, num_timesteps - 1, num_steps)
    steps = np.sort(steps.astype(np.float64))[::-1].copy()
    if spacing == "leading" and steps_offset:
        steps = _offset(steps, steps_offset, num_timesteps)
    return steps


def _offset(steps: np.ndarray, steps_offset: int, num_timesteps: int) -> np.ndarray:
    """`steps` + `steps_offset`, refused past the last training timestep."""
    shifted = steps + steps_offset
    if shifted[0] > num_timesteps - 1:
        raise ValueError(
            f"steps_offset={steps_offset} moves the first of {len(steps)} leading timesteps to "
            f"{shifted[0]:g}, past the schedule's last timestep {num_timesteps - 1}; use fewer "
            "steps or a smaller offset"
        )
    return shifted


def timesteps_and_sigmas(
    schedule: NoiseSchedule,
    num_steps: int,
    spacing: str,
    *,
    skip_zero: bool = False,
    steps_offset: int = 0,
    end_at_zero: bool = True,
    rho: float = KARRAS_RHO,
    sigmas: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Timesteps [n] and sigmas [n + 1] of an n-step grid; the last sigma is 0, or with
    `end_at_zero=False` the schedule's first level sigma_0 (alpha_bar_0 instead of 1).

    "karras" is Karras et al.'s rho = 7 grid as diffusers builds it; "edm" the same formula
    with `rho` chosen; "logsnr" uniform in lambda; all three over the schedule's sigma range.
    Given `sigmas` (the n active levels, e.g. an optimised grid), they replace the spacing.
    """
    schedule_sigmas = train_sigmas(schedule)
    if sigmas is not None:
        validate_custom_sigmas(sigmas, schedule)
        sigmas = np.asarray(sigmas, np.float64)
        timesteps = sigma_to_timestep(sigmas, schedule_sigmas)
        return timesteps, np.append(sigmas, 0.0 if end_at_zero else schedule_sigmas[0])
    validate_spacing(spacing)
    if spacing == "edm" and not rho > 0:
        raise ValueError(f"rho={rho!r} must be > 0 (EDM's grid exponent; 7 in Karras et al.)")
    if spacing in SIGMA_SPACINGS:
        sigma_min, sigma_max = schedule_sigmas[0], schedule_sigmas[-1]
        if spacing == "logsnr":
            sigmas = log_snr_sigmas(sigma_min, sigma_max, num_steps)
        else:
            sigmas = karras_sigmas(
                sigma_min, sigma_max, num_steps, KARRAS_RHO if spacing == "karras" else rho
            )
        timesteps = sigma_to_timestep(sigmas, schedule_sigmas)
    else:
        timesteps = spaced_timesteps(
            schedule.num_timesteps,
            num_steps,
            spacing,
            skip_zero=skip_zero,
            steps_offset=steps_offset,
        )
        # Between training timesteps sigma is interpolated linearly (as diffusers' Euler does).
        sigmas = np.interp(timesteps, np.arange(len(schedule_sigmas)), schedule_sigmas)
    return timesteps, np.append(sigmas, 0.0 if end_at_zero else schedule_sigmas[0])


def pad_grid(
    timesteps: np.ndarray,
    sigmas: np.ndarray,
    max_steps: int | None = None,
    extras: dict[str, np.ndarray] | None = None,
) -> Grid:
    """The padded per-step arrays of an n-step grid (timesteps [n], sigmas [n + 1])."""
    num_steps = len(timesteps)
    max_steps = num_steps if max_steps is None else max_steps
    if not 1 <= num_steps <= max_steps:
        raise ValueError(f"num_steps={num_steps} must be in [1, {max_steps}] (max_steps).")
    pad = max_steps - num_steps

    def padded(values: np.ndarray, fill: float = 0.0) -> jax.Array:
        widths = [(0, pad)] + [(0, 0)] * (values.ndim - 1)
        return jnp.asarray(np.pad(values, widths, constant_values=fill), jnp.float32)

    return Grid(
        timesteps=padded(timesteps),
        sigmas=padded(sigmas[:-1], 1.0),
        sigmas_next=padded(sigmas[1:], 1.0),
        steps_left=jnp.asarray(np.pad(np.arange(num_steps, 0, -1), (0, pad)), jnp.int32),
        extras={name: padded(rows) for name, rows in (extras or {}).items()},
    )


def flow_timesteps_and_sigmas(num_steps: int, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A flow grid: network timesteps 1000 t [n] and the sampler's levels t [n + 1] (1 to 0)."""
    times = processes.flow_times(num_steps, shift)
    return times[:-1] * processes.FLOW_TIME_SCALE, times


def drop_first(grid: Grid, count: int) -> Grid:
    """The grid without its first `count` active steps, padded back to its max_steps (so every
    count shares one compile); built on the host.

    Kept rows keep their values, steps_left (n - i) and extras rows included: diffusers' edit
    pipelines slice the scheduler's timesteps the same way and keep its step index counting
    from the first kept step (set_begin_index), so e.g. LMS's first kept step uses the
    coefficient row its position in the full grid gives it.
    """
    num_steps = int(grid.steps_left[0])
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < num_steps:
        raise ValueError(f"count={count!r} must be an integer in [0, {num_steps - 1}]")

    def shifted(row: jax.Array, fill: float) -> jax.Array:
        filler = jnp.full((count,) + row.shape[1:], fill, row.dtype)
        return jnp.concatenate([row[count:], filler])

    return Grid(
        timesteps=shifted(grid.timesteps, 0.0),
        sigmas=shifted(grid.sigmas, 1.0),  # the padding values of pad_grid
        sigmas_next=shifted(grid.sigmas_next, 1.0),
        steps_left=shifted(grid.steps_left, 0),
        extras={name: shifted(rows, 0.0) for name, rows in grid.extras.items()},
    )
