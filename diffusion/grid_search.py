"""Optimised step grids: the levels that bring a few-step chain closest to a fine-step solution.

For a sampler and a step count n the grid is the n active levels sigma_0 > ... > sigma_{n-1}
(then 0). sigma_0 stays at the schedule's sigma_max, where x_T lives; the other n - 1 are free
inside (sigma_min, sigma_max) and are parametrised by softmax weights over the log-sigma range,
so every parameter vector is a valid (strictly decreasing, in-range) grid. The objective is the
distance of the chain's endpoints from reference endpoints of the same x_T on a calibration
batch, per-sample RMS averaged over the batch (the distillation-style objective of Watson et al.
2021; Sabour et al. 2024's "Align Your Steps" asks the same question through a bound). A
derivative-free search (Powell's method) minimises it, so any sampler works, host-built grid
rows (LMS, DEIS) included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from scipy import optimize

from diffusion import grids, samplers
from diffusion.schedules import NoiseSchedule

Endpoints = Callable[[np.ndarray], np.ndarray]  # active sigmas [n] -> chain endpoints [B, ...]


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The best grid found and how it scores."""

    sigmas: np.ndarray  # [n] active levels, decreasing
    loss: float  # RMS distance to the reference with `sigmas`
    start_losses: dict[str, float]  # the fixed grids the search started from, scored alike
    evaluations: int  # chains run


def rms_distance(endpoints: np.ndarray, reference: np.ndarray) -> float:
    """Per-sample root mean square of endpoints - reference (over all but the batch axis),
    averaged over the batch: the typical sample's error, which a few samples that land in
    another mode (errors of the modes' spacing) do not dominate as they do a pooled RMS."""
    difference = np.asarray(endpoints, np.float64) - np.asarray(reference, np.float64)
    per_sample = difference.reshape(difference.shape[0], -1)
    return float(np.mean(np.sqrt(np.mean(per_sample**2, axis=1))))


def sigmas_from_weights(
    weights_logits: np.ndarray, sigma_min: float, sigma_max: float
) -> np.ndarray:
    """n active levels from n logits: sigma_0 = sigma_max, then cumulative softmax steps down
    the log-sigma range (the last weight is the gap left above sigma_min)."""
    logits = np.asarray(weights_logits, np.float64)
    weights = np.exp(logits - logits.max())
    weights = weights / weights.sum()
    position = np.concatenate([[0.0], np.cumsum(weights)[:-1]])
    log_max, log_min = np.log(sigma_max), np.log(sigma_min)
    return np.exp(log_max + position * (log_min - log_max))


def weights_from_sigmas(sigmas: np.ndarray, sigma_min: float, sigma_max: float) -> np.ndarray:
    """The logits whose sigmas_from_weights is `sigmas` (sigmas[0] = sigma_max, decreasing; a
    last level at sigma_min itself is moved just inside the range)."""
    log_max, log_min = np.log(sigma_max), np.log(sigma_min)
    position = (np.log(np.asarray(sigmas, np.float64)) - log_max) / (log_min - log_max)
    gaps = np.diff(np.append(position, 1.0))
    if np.any(gaps[:-1] <= 0) or position[0] != 0.0 and abs(position[0]) > 1e-9:
        raise ValueError(
            f"sigmas {np.asarray(sigmas).tolist()} are not a decreasing grid from sigma_max"
        )
    return np.log(np.maximum(gaps, 1e-6))


def start_grid(
    sampler: str,
    num_steps: int,
    schedule: NoiseSchedule,
    spacing: str,
    rho: float = grids.KARRAS_RHO,
) -> np.ndarray:
    """The active levels of a fixed `spacing` as a search start: the first moved to sigma_max
    (where x_T is; the search keeps it there), all inside the schedule's range."""
    grid = samplers.make_grid(sampler, num_steps, schedule=schedule, spacing=spacing, rho=rho)
    levels = np.asarray(grid.sigmas, np.float64)[:num_steps]
    sigma_min, sigma_max = grids.train_sigmas(schedule)[[0, -1]]
    levels[0] = sigma_max
    return np.clip(levels, sigma_min, sigma_max)


class _BudgetSpent(Exception):
    """Raised by the objective once max_evaluations chains have run."""


def search_grid(
    endpoints: Endpoints,
    reference: np.ndarray,
    starts: dict[str, np.ndarray],
    sigma_min: float,
    sigma_max: float,
    max_evaluations: int = 300,
) -> SearchResult:
    """Powell's method from the best of the start grids (name -> active sigmas, all of one
    length n, first at sigma_max, each scored); returns the best grid seen, never worse than
    the best start."""
    lengths = {len(sigmas) for sigmas in starts.values()}
    if len(lengths) != 1:
        raise ValueError(f"start grids must share one length, got {sorted(lengths)}")
    best: dict[str, object] = {"loss": np.inf, "sigmas": None}
    count = {"chains": 0}

    def loss_of_sigmas(sigmas: np.ndarray) -> float:
        if count["chains"] >= max(max_evaluations, len(starts)):
            raise _BudgetSpent  # Powell checks maxfev only between its line searches
        count["chains"] += 1
        if np.any(np.diff(sigmas) >= 0):  # a softmax weight underflowed: two levels coincide
            return 1e30
        loss = rms_distance(endpoints(sigmas), reference)
        if not np.isfinite(loss):
            loss = 1e30
        if loss < best["loss"]:
            best.update(loss=loss, sigmas=np.array(sigmas))
        return loss

    start_losses = {name: loss_of_sigmas(np.asarray(s)) for name, s in starts.items()}
    if lengths == {1}:  # one level, and it is sigma_max: nothing to search
        return SearchResult(best["sigmas"], best["loss"], start_losses, count["chains"])
    # Powell from the best start, restarted from the best grid so far (fresh directions) until
    # the budget is spent or a restart gains less than 0.1%.
    while count["chains"] < max_evaluations:
        before = best["loss"]
        try:
            optimize.minimize(
                lambda w: loss_of_sigmas(sigmas_from_weights(w, sigma_min, sigma_max)),
                weights_from_sigmas(best["sigmas"], sigma_min, sigma_max),
                method="Powell",
                options={"xtol": 1e-3, "ftol": 1e-5},
            )
        except _BudgetSpent:
            break
        if best["loss"] > (1.0 - 1e-3) * before:
            break
    return SearchResult(best["sigmas"], float(best["loss"]), start_losses, count["chains"])
