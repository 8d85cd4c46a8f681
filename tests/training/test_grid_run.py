"""--mode=optimize_grid on a trained tiny model: the grid it writes beats the grids it started
from on its calibration batch, is scored on a held-out batch, and samples through
sampler.spacing='file:PATH'."""

import json
import os

import numpy as np
import pytest

from tests.random_checkpoint import save_random_checkpoint
from training import grid_run, sample_run
from training.run_config import RunConfig


@pytest.mark.slow
def test_optimize_grid_writes_a_grid_the_sampler_reads(tiny_config, tmp_path):
    workdir = str(tmp_path)
    save_random_checkpoint(tiny_config, workdir)  # no train step to compile
    tiny_config.sampler.name = "dpmpp_3m"
    tiny_config.sampler.num_steps = 4
    tiny_config.sampler.num_samples = 16
    tiny_config.sampler.thresholding = "none"
    tiny_config.grid_search.reference_steps = 40
    tiny_config.grid_search.starts = "logsnr,trailing"
    tiny_config.grid_search.max_evaluations = 30
    path = grid_run.optimize_grid(RunConfig.from_configdict(tiny_config), workdir)

    assert path == os.path.join(workdir, "grids", "dpmpp_3m_4.json")
    record = json.loads(open(path).read())
    assert len(record["sigmas"]) == 4 and record["nfe"] == 4
    assert record["calibration_rms"] <= min(record["calibration_rms_of_starts"].values())
    assert set(record["held_out_rms"]) == {"logsnr", "trailing", "optimised"}
    assert 2 < record["chains_run"] <= 30  # the two starts, then the search

    tiny_config.sampler.spacing = f"file:{path}"
    samples = sample_run.sample_from_checkpoint(tiny_config, workdir)
    assert samples.shape == (16, 8, 8, 1) and np.all(np.isfinite(samples))


def test_grid_search_fields_are_checked():
    with pytest.raises(Exception, match=r"grid_search\.starts.*'cosine'"):
        RunConfig.from_configdict({"grid_search": {"starts": "logsnr,cosine"}}, 8, 1)
    with pytest.raises(Exception, match=r"grid_search\.reference_sampler"):
        RunConfig.from_configdict({"grid_search": {"reference_sampler": "rk45"}}, 8, 1)
