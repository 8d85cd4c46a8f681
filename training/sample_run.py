"""`--mode=sample`: restore the newest checkpoint and write EMA samples as PNG + .npz."""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from training import checkpointing, images, loop
from training.experiment import build_experiment
from training.sampling import make_sample_fn


def sample_from_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
    """Samples `sampler.num_samples` images with `config.sampler.*` from the latest EMA params.

    Writes `samples/<sampler>_<steps>steps_step<ckpt>.png` and `.npz` (key `samples`:
    [N, H, W, C] float32 in [-1, 1]) under `workdir` and returns the samples.
    """
    experiment = build_experiment(config)
    manager = checkpointing.make_manager(workdir, config.max_checkpoints_to_keep)
    if manager.latest_step() is None:
        raise FileNotFoundError(
            f"--mode=sample found no checkpoint under {os.path.abspath(workdir)}/checkpoints; "
            "train first (--mode=train) or point --workdir at a run."
        )
    state, shardings = loop.init_or_restore(experiment, manager, config.seed)
    step = int(jax.device_get(state.step))
    sampler = experiment.sampler
    sample_fn = make_sample_fn(
        experiment.model,
        experiment.schedule,
        sampler,
        prediction=experiment.step_config.prediction,
        image_shape=experiment.image_shape,
        mesh=experiment.mesh,
        params_sharding=shardings.ema_params,
        process=experiment.step_config.process,
        flow_shift=experiment.flow_shift,
    )
    start = time.perf_counter()
    samples = sample_fn(state.ema_params, jax.random.key(config.seed))
    elapsed = time.perf_counter() - start
    logging.info(
        "Sampled %d images at checkpoint step %d with %s (%d steps, %s spacing) in %.1f s",
        len(samples),
        step,
        sampler.name,
        sampler.num_steps,
        sampler.spacing,
        elapsed,
    )
    if jax.process_index() == 0:
        stem = os.path.join(
            workdir, "samples", f"{sampler.name}_{sampler.num_steps}steps_step{step:08d}"
        )
        grid = images.make_grid(samples)
        images.save_png(grid, stem + ".png", upscale=max(1, 256 // grid.shape[0]))
        np.savez(stem + ".npz", samples=samples.astype(np.float32))
        logging.info("Wrote %s.png and %s.npz", stem, stem)
    return samples
