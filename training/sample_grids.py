"""The sample grid a training run writes: EMA samples, one row per prompt / class (or originals
over reconstructions for autoencoders), as a PNG and a TensorBoard image."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import jax
from absl import logging

from training import images
from training.experiment import Experiment
from training.train_state import TrainState


def write_sample_grid(
    writer,
    sample_fn,
    state: TrainState,
    step: int,
    workdir: str,
    seed: int,
    rows: int | None,
    labels: Sequence[str] | None = None,
):
    """Samples with the EMA parameters and writes the grid (`images.sample_grid`: cells about
    64 px, `labels` beside their rows) as PNG and as a TensorBoard image."""
    start = time.perf_counter()
    samples = sample_fn(state.ema_params, jax.random.key(seed))
    picture = images.sample_grid(samples, num_rows=rows, labels=labels)
    if jax.process_index() == 0:
        path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
        images.save_png(picture, path)
        logging.info("Wrote %s (%.1f s)", path, time.perf_counter() - start)
    writer.write_images(step, {"samples": picture[None]})


def grid_rows(experiment: Experiment) -> int | None:
    """One grid row per prompt / class for conditional models, originals over reconstructions
    for autoencoders (None: a square grid)."""
    if experiment.step_config.autoencoder is not None:
        return 2
    conditions = experiment.sample_conditions
    return None if conditions is None else len(conditions.prompts)


def grid_labels(experiment: Experiment) -> tuple[str, ...] | None:
    """What each row of the grid shows (see grid_rows): its prompt or class, or original /
    reconstruction for autoencoders; None for an unlabelled square grid."""
    if experiment.step_config.autoencoder is not None:
        return ("original", "reconstruction")
    conditions = experiment.sample_conditions
    return None if conditions is None else conditions.prompts
