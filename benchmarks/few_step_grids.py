"""Optimised step grids for the analytic mixture of benchmarks/few_step.py (issue 20): for each
sampler and NFE, the grid whose chain lands nearest the exact PF-ODE endpoint on a calibration
batch, written as grid files that few_step.py scores on a held-out batch and on other mixtures.

    python benchmarks/few_step_grids.py --out=runs/few_step_grids
    python benchmarks/few_step.py --grid-dir=runs/few_step_grids            # held-out x_T
    python benchmarks/few_step.py --grid-dir=runs/few_step_grids --seed=1   # another mixture

The calibration batch is drawn from its own seed (--seed + 1000), so the x_T few_step.py scores
(seed + 1) were never seen by the search. The search is diffusion/grid_search.py (Powell over
softmax steps in log sigma, started from fixed spacings), the same one --mode=optimize_grid runs
on a trained model; here the reference is the exact ODE solution instead of a fine-step chain.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import few_step  # noqa: E402
from diffusion import analytic, grid_search, grids, samplers, schedules  # noqa: E402
from training import grid_files  # noqa: E402

DEFAULT_SAMPLERS = "dpmpp_2m,dpmpp_3m,unipc,unipc_3,unipc_3_bh1,deis,ipndm"
CALIBRATION_SEED_OFFSET = 1000  # few_step.py draws its x_T from seed + 1


def optimise_one(
    sampler: str,
    nfe: int,
    schedule,
    run,
    x_T: jax.Array,
    reference: np.ndarray,
    start_spacings: list[str],
    max_evaluations: int,
    max_steps: int,
) -> tuple[grid_search.SearchResult, int]:
    """(search result, steps) for `sampler` spending at most `nfe` evaluations."""
    steps = next(n for n in range(nfe, 0, -1) if few_step.fits_budget(sampler, n, nfe, schedule))
    sigma_min, sigma_max = (float(s) for s in grids.train_sigmas(schedule)[[0, -1]])

    def endpoints(sigmas: np.ndarray) -> np.ndarray:
        grid = samplers.make_grid(
            sampler, steps, schedule=schedule, sigmas=sigmas, max_steps=max_steps
        )
        return np.asarray(run(grid, x_T).samples, np.float64)

    starts = {s: grid_search.start_grid(sampler, steps, schedule, s) for s in start_spacings}
    result = grid_search.search_grid(
        endpoints, reference, starts, sigma_min, sigma_max, max_evaluations
    )
    return result, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/few_step_grids")
    parser.add_argument("--samplers", default=DEFAULT_SAMPLERS, help="comma-separated or 'all'")
    parser.add_argument("--nfe", default="5,10,20")
    parser.add_argument("--starts", default="logsnr,karras,edm,trailing,leading")
    parser.add_argument("--max-evaluations", type=int, default=1500)
    parser.add_argument("--dims", type=int, default=16)
    parser.add_argument("--modes", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    nfes = [int(n) for n in args.nfe.split(",")]
    names = (
        few_step.deterministic_samplers() if args.samplers == "all" else args.samplers.split(",")
    )
    start_spacings = args.starts.split(",")
    begin = time.perf_counter()
    print(f"command: python {shlex.join(sys.argv)}")

    schedule = schedules.make_schedule("linear", 1000, 1e-4, 0.02)
    means, stds, weights = few_step.make_mixture(args.dims, args.modes, args.seed)
    denoise = analytic.gmm_denoiser(means, stds, weights)
    model_fn = jax.jit(analytic.sigma_view_model_fn(denoise, schedule))
    rng = np.random.default_rng(args.seed + CALIBRATION_SEED_OFFSET)
    x_T = rng.standard_normal((args.batch, args.dims)).astype(np.float32)
    reference, _ = few_step.reference_endpoints(denoise, x_T, grids.train_sigmas(schedule))
    print(
        f"calibration: mixture seed {args.seed}, x_T seed {args.seed + CALIBRATION_SEED_OFFSET}, "
        f"batch {args.batch}; objective RMS of (endpoint - exact PF-ODE endpoint); starts "
        f"{args.starts}; at most {args.max_evaluations} chains per grid"
    )
    print("\n| sampler | NFE | best start | RMS | optimised RMS | chains | seconds |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for sampler in names:
        run = few_step.our_runner(model_fn, sampler)
        for nfe in nfes:
            tick = time.perf_counter()
            result, steps = optimise_one(
                sampler,
                nfe,
                schedule,
                run,
                jnp.asarray(x_T),
                reference,
                start_spacings,
                args.max_evaluations,
                max(nfes),
            )
            best_start = min(result.start_losses, key=result.start_losses.get)
            path = os.path.join(args.out, f"{sampler}_{steps}.json")
            grid_files.write_grid(
                path,
                result.sigmas,
                sampler=sampler,
                num_steps=steps,
                nfe=nfe,
                made_by=f"python {shlex.join(sys.argv)}",
                calibration_rms=result.loss,
                calibration_rms_of_starts=result.start_losses,
                chains_run=result.evaluations,
            )
            print(
                f"| {sampler} | {nfe} | {best_start} | {result.start_losses[best_start]:.2e} "
                f"| {result.loss:.2e} | {result.evaluations} | "
                f"{time.perf_counter() - tick:.0f} |",
                flush=True,
            )
    print(f"\nwrote {args.out}/<sampler>_<steps>.json (total {time.perf_counter() - begin:.0f} s)")


if __name__ == "__main__":
    main()
