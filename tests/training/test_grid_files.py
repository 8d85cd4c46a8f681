"""training/grid_files.py and `sampler.spacing='file:PATH'`: a grid file round-trips, and a
missing, malformed or mismatched one is refused by field name before anything is built."""

import json

import numpy as np
import pytest

from configs import digits_ddpm, digits_flow
from diffusion import grids
from tests.training.test_config_checks import _refused, _with
from training import grid_files
from training.run_config import RunConfig


def test_a_grid_file_round_trips(tmp_path):
    path = str(tmp_path / "grids" / "dpmpp_3m_5.json")
    sigmas = np.array([14.6, 3.1, 0.72, 0.2, 0.03])
    grid_files.write_grid(path, sigmas, sampler="dpmpp_3m", nfe=5)
    levels, record = grid_files.read_grid(path)
    np.testing.assert_array_equal(levels, sigmas)
    assert record == {"sampler": "dpmpp_3m", "nfe": 5}


def test_missing_and_malformed_files_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        grid_files.read_grid(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        grid_files.read_grid(str(tmp_path / "bad.json"))
    (tmp_path / "empty.json").write_text(json.dumps({"levels": [1.0]}))
    with pytest.raises(ValueError, match="has no 'sigmas' list"):
        grid_files.read_grid(str(tmp_path / "empty.json"))


def _grid_file(tmp_path, sigmas) -> str:
    path = str(tmp_path / "grid.json")
    grid_files.write_grid(path, np.asarray(sigmas))
    return f"file:{path}"


def test_a_config_takes_a_grid_file_and_builds_its_levels(tmp_path):
    schedule = RunConfig.from_configdict(digits_ddpm.get_config(), 8, 1).diffusion.make_schedule()
    levels = grids.log_snr_sigmas(*grids.train_sigmas(schedule)[[0, -1]], 6)
    spacing = _grid_file(tmp_path, levels)
    config = _with(digits_ddpm, sampler__spacing=spacing, sampler__num_steps=6)
    run = RunConfig.from_configdict(config, 8, process_count=1)
    np.testing.assert_array_equal(run.sampler.grid_sigmas(), levels)


def test_a_grid_file_is_refused_by_field_before_anything_runs(tmp_path):
    missing = f"file:{tmp_path / 'missing.json'}"
    _refused(_with(digits_ddpm, sampler__spacing=missing), r"sampler\.spacing.*does not exist")
    spacing = _grid_file(tmp_path, [10.0, 1.0, 0.1])
    _refused(
        _with(digits_ddpm, sampler__spacing=spacing, sampler__num_steps=5),
        r"sampler\.num_steps.*5.*must equal the 3 levels",
    )
    wide = _grid_file(tmp_path, [1e5, 1.0, 0.1])
    _refused(
        _with(digits_ddpm, sampler__spacing=wide, sampler__num_steps=3),
        r"sampler\.spacing.*outside the schedule's",
    )
    flow = _with(digits_flow, sampler__spacing=spacing, sampler__num_steps=3)
    _refused(flow, r"sampler\.spacing.*grid of VP sigmas")


def test_unknown_spacings_and_bad_rho_are_refused():
    _refused(_with(digits_ddpm, sampler__spacing="cosine"), r"sampler\.spacing.*logsnr")
    _refused(_with(digits_ddpm, sampler__rho=0.0), r"sampler\.rho.*must be > 0")
