"""Few-step sampling error: every deterministic sampler x grid, ours and diffusers', against the
exact probability-flow-ODE endpoint of an analytic Gaussian mixture (issue 20).

    python benchmarks/few_step.py
    python benchmarks/few_step.py --nfe=5,10 --batch=128 --no-diffusers
    python benchmarks/few_step.py --grid-files=grids/dpmpp_3m_10.json   # spacing file:PATH
    python benchmarks/few_step.py --grid-dir=runs/few_step_grids   # <sampler>_<steps>.json there

The data is an isotropic Gaussian mixture in --dims dimensions with narrow modes; the network is
its exact noise predictor (diffusion/analytic.py), fractional timesteps mapped to sigma
log-linearly (the inverse of grids.sigma_to_timestep). Every sampler starts from the same x_T at
the schedule's last level and is compared with a float64 RK4 solution of the PF-ODE from that
x_T (analytic.pf_ode_endpoint), so the only error left is the sampler's and its grid's (a grid
that starts below the last level, as "leading" does, pays for skipping the top). The figure is
the per-sample RMS over dimensions of (endpoint - reference), averaged over the batch. NFE is the
number of network calls; a cell whose sampler cannot spend the budget exactly shows the NFE it
spent (Heun: 2 n - 1).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import few_step_diffusers  # noqa: E402
from diffusion import analytic, grids, samplers, schedules  # noqa: E402
from training import grid_files  # noqa: E402

REFERENCE_STEPS = 4000  # RK4 steps in lambda; the run checks that half as many agree
REFERENCE_TOLERANCE = 1e-6  # largest RMS change allowed when the reference steps are halved
SIGMA_END_FRACTION = 1e-4  # the reference integrates down to this fraction of sigma_min
STOCHASTIC = ("ddpm", "euler_ancestral")  # plus any name containing "sde" or "ancestral"
FLOOR_SIGMAS = (0.03, 0.05, 0.1, 0.2, 0.3)  # last levels whose jump floor the header prints
DIR_PREFIX = "dir:"  # a row whose grid for n steps is <dir>/<sampler>_<n>.json (few_step_grids.py)

Cell = tuple[float, int]  # (RMS error, NFE spent)


def make_mixture(dims: int, modes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means [K, D] in [-1, 1]^D, stds [K] in [0.05, 0.1], weights [K] summing to 1)."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, modes)
    return (
        rng.uniform(-1.0, 1.0, (modes, dims)),
        rng.uniform(0.05, 0.1, modes),
        weights / weights.sum(),
    )


def rms_error(endpoints: np.ndarray, reference: np.ndarray) -> float:
    """Per-sample RMS over dimensions of the difference, averaged over the batch."""
    diff = np.asarray(endpoints, np.float64) - reference
    return float(np.mean(np.sqrt(np.mean(diff**2, axis=-1))))


def reference_endpoints(
    denoise, x_T: np.ndarray, train_sigmas: np.ndarray
) -> tuple[np.ndarray, float]:
    """The PF-ODE endpoints from x_T at the last training level, and their change when the RK4
    step count is halved (asserted below REFERENCE_TOLERANCE)."""
    x = np.asarray(x_T, np.float64) * np.sqrt(1.0 + train_sigmas[-1] ** 2)  # sigma view
    sigma_end = SIGMA_END_FRACTION * train_sigmas[0]
    fine, coarse = (
        analytic.pf_ode_endpoint(denoise, x, train_sigmas[-1], sigma_end, steps)
        for steps in (REFERENCE_STEPS, REFERENCE_STEPS // 2)
    )
    change = float(np.sqrt(np.mean((fine - coarse) ** 2)))
    assert change < REFERENCE_TOLERANCE, (
        f"reference not converged: halving steps moved it {change:.2e}"
    )
    return fine, change


def jump_floor(
    denoise, x_T: np.ndarray, train_sigmas: np.ndarray, reference, sigma_last: float
) -> float:
    """The error of the exact ODE down to `sigma_last` followed by D(x, sigma_last): the floor
    of a grid whose last step jumps from sigma_last to 0 by returning the denoiser's x0, as
    every first-order final step does (a multistep last step that extrapolates, LMS's or
    UniPC's at 15 steps and more, can land below it)."""
    x = np.asarray(x_T, np.float64) * np.sqrt(1.0 + train_sigmas[-1] ** 2)
    jumped = analytic.pf_ode_endpoint(denoise, x, train_sigmas[-1], sigma_last, REFERENCE_STEPS)
    return rms_error(jumped, reference)


# --- our samplers --------------------------------------------------------------------------------


def deterministic_samplers() -> list[str]:
    """The registry's samplers whose steps add no noise, read when called (it grows)."""
    return [
        name
        for name, spec in samplers.SAMPLERS.items()
        if name not in STOCHASTIC
        and "sde" not in name
        and "ancestral" not in name
        and not spec.eta
        and "ddpm" in spec.processes
    ]


def explicit_sigmas(spacing: str, sampler: str, num_steps: int) -> np.ndarray | None:
    """The grid file's levels for a 'file:PATH' or 'dir:DIR' spacing (None for a spacing rule);
    ValueError when there is no file or it holds another step count."""
    if spacing.startswith(DIR_PREFIX):
        path = os.path.join(spacing[len(DIR_PREFIX) :], f"{sampler}_{num_steps}.json")
    elif grid_files.is_file_spacing(spacing):
        path = grid_files.path_of(spacing)
    else:
        return None
    sigmas, _ = grid_files.read_grid(path)
    if len(sigmas) != num_steps:
        raise ValueError(f"{path} holds {len(sigmas)} levels, not {num_steps}")
    return sigmas


def fits_budget(sampler: str, num_steps: int, nfe: int, schedule) -> bool:
    """Whether `num_steps` of `sampler` spend at most `nfe` evaluations (on a logsnr grid)."""
    grid = samplers.make_grid(sampler, num_steps, schedule=schedule, spacing="logsnr")
    return samplers.count_evaluations(grid, sampler) <= nfe


def grid_for_budget(sampler: str, nfe: int, schedule, spacing: str, max_steps: int):
    """(grid, NFE spent): the most steps whose evaluations fit in `nfe`; raises the refusal at
    n = nfe (an unknown spacing, a missing grid file) when no step count is accepted."""
    refusal = ValueError(f"{sampler} cannot take a step within {nfe} evaluations")
    for num_steps in range(nfe, 0, -1):
        try:
            sigmas = explicit_sigmas(spacing, sampler, num_steps)
            rule = "leading" if sigmas is not None else spacing
            samplers.validate_sampler(sampler, num_steps, schedule.num_timesteps, rule)
            grid = samplers.make_grid(
                sampler,
                num_steps,
                schedule=schedule,
                spacing=rule,
                max_steps=max_steps,
                sigmas=sigmas,
            )
        except ValueError as error:  # a grid file may be missing or hold other counts
            if spacing.startswith(DIR_PREFIX) and fits_budget(sampler, num_steps, nfe, schedule):
                raise  # the optimised grid for this budget is missing: no smaller stand-in
            refusal = error if num_steps == nfe else refusal
            continue
        spent = samplers.count_evaluations(grid, sampler)
        if spent <= nfe:
            return grid, spent
    raise refusal


def our_runner(model_fn, sampler: str) -> Callable:
    """sample_on_grid jitted once per sampler: a padded grid is an argument, so every spacing and
    step count shares the compile (the same denoiser and driver as samplers.sample)."""
    denoise = samplers.make_denoiser(model_fn)
    run = lambda grid, x_T: samplers.sample_on_grid(
        denoise, grid, x_T, jax.random.key(0), sampler=sampler
    )
    return jax.jit(run)


def our_rows(model_fn, schedule, x_T, reference, nfes, spacings) -> Iterator[tuple[str, list]]:
    """(label, cells) for every deterministic sampler x spacing; a cell is a Cell or the reason
    the sampler refused the budget."""
    x_T = jnp.asarray(x_T, jnp.float32)
    for sampler in deterministic_samplers():
        run = our_runner(model_fn, sampler)
        for spacing in spacings:
            cells = []
            for nfe in nfes:
                try:
                    grid, spent = grid_for_budget(sampler, nfe, schedule, spacing, max(nfes))
                except ValueError as error:
                    cells.append(str(error).split(";")[0])
                    continue
                out = run(grid, x_T)
                assert int(out.nfe) == spent, (sampler, spacing, int(out.nfe), spent)
                cells.append((rms_error(out.samples, reference), spent))
            if spacing.startswith(DIR_PREFIX) and all(isinstance(c, str) for c in cells):
                continue  # no grid file for this sampler
            yield f"{sampler} / {spacing}", cells


def check_driver_matches_sample(model_fn, schedule, x_T) -> None:
    """The jitted runner gives samplers.sample's result (one combination, as a guard)."""
    sampler, spacing, steps = deterministic_samplers()[-1], "karras", 7
    expected = samplers.sample(
        model_fn,
        schedule,
        x_T,
        jax.random.key(0),
        sampler=sampler,
        num_steps=steps,
        spacing=spacing,
    ).samples
    grid = samplers.make_grid(sampler, steps, schedule=schedule, spacing=spacing, max_steps=20)
    got = our_runner(model_fn, sampler)(grid, x_T).samples
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# --- report ---------------------------------------------------------------------------------------


def format_cell(cell: Cell | str, nfe: int) -> str:
    """'1.23e-03', with the NFE spent when short of the budget, or the reason there is none."""
    if isinstance(cell, str):
        return "—"
    error, spent = cell
    return f"{error:.2e}" + (f" ({spent})" if spent != nfe else "")


def best(rows: list[tuple[str, list]], column: int) -> tuple[str, float]:
    """(label, error) of the smallest finite error in one NFE column."""
    scored = [
        (cells[column][0], label)
        for label, cells in rows
        if not isinstance(cells[column], str) and np.isfinite(cells[column][0])
    ]
    error, label = min(scored) if scored else (float("nan"), "—")
    return label, error


def print_table(title: str, rows: list[tuple[str, list]], nfes: list[int]) -> None:
    """A markdown table of the rows, then why any cell is empty (once per row)."""
    print(f"\n### {title}\n")
    print("| sampler | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    print("|---|---|" + "---:|" * len(nfes))
    notes = []
    for label, cells in rows:
        sampler, grid = label.split(" / ", 1)
        print(f"| {sampler} | {grid} | " + " | ".join(map(format_cell, cells, nfes)) + " |")
        reasons = {c: [n for c2, n in zip(cells, nfes, strict=True) if c2 == c] for c in cells}
        notes += [(label, r, at) for r, at in reasons.items() if isinstance(r, str)]
    for label, reason, at in notes:
        print(f"- {label}, NFE {', '.join(map(str, at))}: {reason}")


def print_summary(ours: list, theirs: list, nfes: list[int]) -> None:
    """Best per NFE on each side, their ratio, and issue 20's two targets."""
    print("\n### Best per NFE\n")
    print("| NFE | best of ours | RMS | best of diffusers | RMS | diffusers / ours |")
    print("|---:|---|---:|---|---:|---:|")
    figures = {}
    for column, nfe in enumerate(nfes):
        (ours_label, ours_error), (their_label, their_error) = (
            best(ours, column),
            best(theirs, column),
        )
        figures[nfe] = (ours_error, their_error)
        ratio = their_error / ours_error
        print(
            f"| {nfe} | {ours_label} | {ours_error:.2e} | {their_label} | {their_error:.2e} "
            f"| {ratio:.2f} |"
        )
    if 10 in figures:
        ours_10, theirs_10 = figures[10]
        met = "met" if ours_10 <= 0.5 * theirs_10 else "NOT met"
        print(
            f"\nTarget 1 (ours at 10 NFE <= 0.5 x diffusers' best at 10): {met} "
            f"({ours_10:.2e} vs 0.5 x {theirs_10:.2e} = {0.5 * theirs_10:.2e})"
        )
        if 5 in figures:
            ours_5 = figures[5][0]
            met = "met" if ours_5 < theirs_10 else "NOT met"
            print(
                f"Target 2 (ours at 5 NFE < diffusers' best at 10): {met} "
                f"({ours_5:.2e} vs {theirs_10:.2e})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfe", default="5,10,20,50")
    parser.add_argument("--dims", type=int, default=16)
    parser.add_argument("--modes", type=int, default=8)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid-files", default="", help="comma-separated; spacing file:PATH")
    parser.add_argument("--grid-dir", default="", help="optimised grids: <sampler>_<n>.json")
    parser.add_argument("--no-diffusers", action="store_true")
    args = parser.parse_args()
    nfes = [int(n) for n in args.nfe.split(",")]
    spacings = list(grids.SPACINGS) + [f"file:{p}" for p in args.grid_files.split(",") if p]
    spacings += [DIR_PREFIX + args.grid_dir] if args.grid_dir else []
    start = time.perf_counter()

    print(f"command: python {shlex.join(sys.argv)}")
    schedule = schedules.make_schedule("linear", 1000, 1e-4, 0.02)
    means, stds, weights = make_mixture(args.dims, args.modes, args.seed)
    denoise = analytic.gmm_denoiser(means, stds, weights)
    model_fn = jax.jit(analytic.sigma_view_model_fn(denoise, schedule))
    x_T = np.random.default_rng(args.seed + 1).standard_normal((args.batch, args.dims))
    x_T = x_T.astype(np.float32)
    train_sigmas = grids.train_sigmas(schedule)
    reference, change = reference_endpoints(denoise, x_T, train_sigmas)
    print(
        f"data: {args.modes} modes in {args.dims} dims, means U[-1,1], stds "
        f"{stds.min():.3f}-{stds.max():.3f} (seed {args.seed}); linear schedule T=1000, "
        f"beta 1e-4..0.02; batch {args.batch}; reference: RK4 in log sigma, {REFERENCE_STEPS} "
        f"steps to {SIGMA_END_FRACTION:g} sigma_min (halving the steps moves it {change:.1e} RMS)"
    )
    floors = {
        sigma: jump_floor(denoise, x_T, train_sigmas, reference, sigma)
        for sigma in (train_sigmas[0], *FLOOR_SIGMAS)
    }
    print(
        "figure: per-sample RMS over dims of (endpoint - reference), mean over the batch; exact "
        "ODE to sigma_last then x0 = D(x, sigma_last) (a first-order last step's floor) is off by "
        + ", ".join(f"{error:.2e} from {sigma:.3g}" for sigma, error in floors.items())
    )
    check_driver_matches_sample(model_fn, schedule, jnp.asarray(x_T))

    ours = list(our_rows(model_fn, schedule, x_T, reference, nfes, spacings))
    print_table("Ours (diffusion/solvers.py x diffusion/grids.py)", ours, nfes)
    theirs = []
    if not args.no_diffusers:
        score = lambda ends: rms_error(ends, reference)
        theirs = few_step_diffusers.rows(model_fn, schedule, x_T, nfes, score)
        print_table("diffusers' schedulers (same schedule, same exact model)", theirs, nfes)
        print_summary(ours, theirs, nfes)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
