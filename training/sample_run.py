"""`--mode=sample`: restore the newest checkpoint and write EMA samples as PNG + .npz."""

from __future__ import annotations

import io
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

import paths
from training import checkpointing, images, loop, sample_grids
from training.experiment import build_experiment
from training.run_config import RunConfig


def restore_sampler(config: RunConfig | ml_collections.ConfigDict, workdir: str):
    """(experiment, restored train state, sample_fn) for the latest checkpoint under `workdir`,
    or, with none there, for the pretrained U-Net (init_from / pretrained.path) at step 0.

    `sample_fn(params, key, num_steps=None, guidance_scale=None)` is compiled on first use;
    changing the guidance scale (or, with sampler.max_steps, the step count) reuses that compile.
    """
    experiment = build_experiment(config)
    config = experiment.run
    manager = checkpointing.make_manager(workdir, config.max_checkpoints_to_keep)
    if manager.latest_step() is None and experiment.initial_params_fn is None:
        raise FileNotFoundError(
            f"--mode=sample found no checkpoint under {paths.absolute(workdir)}/checkpoints; "
            "train first (--mode=train), point --workdir at a run, or sample a pretrained "
            "pipeline (--config.pretrained.path=DIR)."
        )
    state, shardings = loop.init_or_restore(experiment, manager, config.seed)
    sample_fn = loop.experiment_sample_fn(experiment, shardings.ema_params)
    return experiment, state, sample_fn


def sample_from_checkpoint(
    config: RunConfig | ml_collections.ConfigDict, workdir: str
) -> np.ndarray:
    """Samples `sampler.num_samples` images (per prompt) from the EMA params with `sampler.*`.

    Writes `samples/<sampler>_<steps>steps[_cfg<scale>]_step<ckpt>.png` and `.npz` (key `samples`:
    [N, H, W, C] float32 in [-1, 1]; conditional models add `prompt_ids` [N] and `prompts`) under
    `workdir` and returns the samples.
    """
    experiment, state, sample_fn = restore_sampler(config, workdir)
    step = int(jax.device_get(state.step))
    sampler = experiment.sampler
    start = time.perf_counter()
    samples = sample_fn(state.ema_params, jax.random.key(experiment.run.seed))
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
        guidance = "" if experiment.sample_conditions is None else f"_cfg{sampler.guidance_scale:g}"
        stem = os.path.join(
            workdir,
            "samples",
            f"{sampler.name}_{sampler.num_steps}steps{guidance}_step{step:08d}",
        )
        picture = images.sample_grid(
            samples,
            num_rows=sample_grids.grid_rows(experiment),
            labels=sample_grids.grid_labels(experiment),
        )
        images.save_png(picture, stem + ".png")  # labelled and enlarged; the .npz stays raw
        arrays = {"samples": samples.astype(np.float32)}
        conditions = experiment.sample_conditions
        if conditions is not None:  # which prompt / class each image answers, and the prompts
            arrays["prompt_ids"] = conditions.prompt_ids.astype(np.int32)
            arrays["prompts"] = np.array(conditions.prompts)
        encoded = io.BytesIO()
        np.savez(encoded, **arrays)
        paths.write_bytes(stem + ".npz", encoded.getvalue())
        logging.info("Wrote %s.png and %s.npz", stem, stem)
    return samples
