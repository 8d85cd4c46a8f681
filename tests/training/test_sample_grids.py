"""training/sample_grids.py: the grid a run writes, and what its rows are."""

import types

import numpy as np
from PIL import Image

from training import sample_grids


def test_the_sample_grid_is_one_enlarged_labelled_picture_for_png_and_tensorboard(tmp_path):
    """Two prompts' rows of ten 8x8 samples: cells of 64 px, the prompts left of their rows, the
    same picture in the PNG and in TensorBoard; grid_labels names the rows grid_rows makes."""
    samples = np.random.default_rng(0).uniform(-1, 1, (20, 8, 8, 1)).astype(np.float32)
    written = []
    writer = types.SimpleNamespace(write_images=lambda step, images: written.append((step, images)))
    state = types.SimpleNamespace(ema_params={})
    sample_grids.write_sample_grid(
        writer, lambda params, key: samples, state, 5, str(tmp_path), 0, 2, ("3", "7")
    )
    png = np.asarray(Image.open(tmp_path / "samples" / "step_00000005.png"))
    [(step, tensorboard)] = written
    assert step == 5
    np.testing.assert_array_equal(tensorboard["samples"][0, ..., 0], png)
    assert png.shape[0] == 2 * 65 + 1 and png.shape[1] > 10 * 65 + 1  # + the labels' column

    experiment = types.SimpleNamespace(
        step_config=types.SimpleNamespace(autoencoder=None),
        sample_conditions=types.SimpleNamespace(prompts=("3", "7")),
    )
    assert (sample_grids.grid_rows(experiment), sample_grids.grid_labels(experiment)) == (
        2,
        ("3", "7"),
    )
    experiment.sample_conditions = None
    assert (sample_grids.grid_rows(experiment), sample_grids.grid_labels(experiment)) == (
        None,
        None,
    )
    experiment.step_config.autoencoder = object()
    assert sample_grids.grid_labels(experiment) == ("original", "reconstruction")
