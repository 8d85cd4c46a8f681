"""`--mode=optimize_grid`: search the step grid of `sampler.name` at `sampler.num_steps` for the
newest checkpoint (or pretrained pipeline), and write it as a grid file for
`sampler.spacing='file:PATH'`.

The objective (diffusion/grid_search.py) is the per-image RMS distance (averaged over images) of
the few-step chain's images from a fine-step reference chain's (`grid_search.reference_*`) from
the same noise, on a calibration batch of `sampler.num_samples` (seed `seed`); the grid found is
scored again on a held-out batch (seed + 1) beside the grids the search started from, and both
go into the file and the log.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from diffusion import grid_search, grids, samplers
from schema import require
from training import grid_files, loop, sample_run

if TYPE_CHECKING:
    from training.run_config import RunConfig


def _chain_endpoints(sample_fn, params, key, grid_for):
    """sigmas -> the chain's images [N, ...] (unclipped) from `key`'s noise on `grid_for(sigmas)`
    (None: the sampler's own grid); one compile for every grid."""

    def endpoints(sigmas: np.ndarray | None) -> np.ndarray:
        arguments = list(sample_fn.chain_arguments(params, key))
        if sigmas is not None:
            arguments[2] = grid_for(sigmas)
        images = multihost_utils.process_allgather(sample_fn.chain(*arguments), tiled=True)
        return np.asarray(images, np.float64)[: sample_fn.num_images]

    return endpoints


def optimize_grid(run: RunConfig, workdir: str) -> str:
    """Searches, scores and writes the grid; returns the file's path."""
    require(
        run.diffusion.process == "ddpm",
        "diffusion.process",
        run.diffusion.process,
        "--mode=optimize_grid places VP sigmas; flow models take flow_shift instead.",
    )
    search, sampler = run.grid_search, run.sampler
    experiment, state, sample_fn = sample_run.restore_sampler(run, workdir)
    schedule, params = experiment.schedule, state.ema_params
    sigma_min, sigma_max = (float(s) for s in grids.train_sigmas(schedule)[[0, -1]])

    def grid_for(sigmas: np.ndarray):
        return samplers.make_grid(
            sampler.name,
            sampler.num_steps,
            schedule=schedule,
            sigmas=sigmas,
            max_steps=sampler.max_steps or None,
        )

    reference_sampler = dataclasses.replace(
        sampler,
        name=search.reference_sampler,
        num_steps=search.reference_steps,
        spacing=search.reference_spacing,
        max_steps=0,
    )
    reference_fn = loop.experiment_sample_fn(
        dataclasses.replace(experiment, run=dataclasses.replace(run, sampler=reference_sampler)),
        jax.tree.map(lambda leaf: leaf.sharding, params),
    )
    keys = {"calibration": jax.random.key(run.seed), "held_out": jax.random.key(run.seed + 1)}
    chains = {
        name: _chain_endpoints(sample_fn, params, key, grid_for) for name, key in keys.items()
    }
    references = {
        name: _chain_endpoints(reference_fn, params, key, grid_for)(None)
        for name, key in keys.items()
    }
    starts = {
        spacing: grid_search.start_grid(
            sampler.name, sampler.num_steps, schedule, spacing, sampler.rho
        )
        for spacing in search.start_spacings()
    }
    result = grid_search.search_grid(
        chains["calibration"],
        references["calibration"],
        starts,
        sigma_min,
        sigma_max,
        search.max_evaluations,
    )
    held_out = {
        name: grid_search.rms_distance(chains["held_out"](sigmas), references["held_out"])
        for name, sigmas in {**starts, "optimised": result.sigmas}.items()
    }
    step = int(jax.device_get(state.step))
    path = search.output or os.path.join(
        workdir, "grids", f"{sampler.name}_{sampler.num_steps}.json"
    )
    record = {
        "sampler": sampler.name,
        "num_steps": sampler.num_steps,
        "nfe": samplers.count_evaluations(grid_for(result.sigmas), sampler.name),
        "checkpoint_step": step,
        "schedule": [run.diffusion.schedule, run.diffusion.num_timesteps],
        "reference": f"{search.reference_sampler} {search.reference_steps} steps "
        f"{search.reference_spacing}",
        "calibration_rms": result.loss,
        "calibration_rms_of_starts": result.start_losses,
        "held_out_rms": held_out,
        "chains_run": result.evaluations,
        "num_samples": sample_fn.num_images,
    }
    if jax.process_index() == 0:
        grid_files.write_grid(path, result.sigmas, **record)
    logging.info("Optimised grid written to %s:\n%s", path, format_summary(record))
    print(format_summary(record), flush=True)
    return path


def format_summary(record: dict) -> str:
    """The calibration and held-out RMS of every start grid and of the optimised one."""
    lines = [
        f"{record['sampler']} at {record['num_steps']} steps ({record['nfe']} NFE), reference "
        f"{record['reference']}; per-image RMS distance from the reference, mean over images:",
        "| grid | calibration | held out |",
        "| --- | ---: | ---: |",
    ]
    for name, loss in record["calibration_rms_of_starts"].items():
        lines.append(f"| {name} | {loss:.4g} | {record['held_out_rms'][name]:.4g} |")
    lines.append(
        f"| optimised | {record['calibration_rms']:.4g} | "
        f"{record['held_out_rms']['optimised']:.4g} |"
    )
    return "\n".join(lines)
