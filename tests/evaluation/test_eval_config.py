"""evaluation/eval_config.py: the eval section's checks and its sweep syntax."""

import pytest

import schema
from errors import ConfigError
from evaluation.eval_config import EvalConfig, SweepPoint


def test_sweep_lists_every_sampler_and_step_count_in_order():
    cfg = EvalConfig(sweep=" ddim:10,20 ; dpmpp_2m:5 ;")
    assert cfg.sweep_points("euler", 7) == (
        SweepPoint("ddim", 10),
        SweepPoint("ddim", 20),
        SweepPoint("dpmpp_2m", 5),
    )
    assert EvalConfig().sweep_points("euler", 7) == (SweepPoint("euler", 7),)


def test_a_sweep_entry_may_name_its_grid_and_a_grid_file_path_may_hold_colons():
    cfg = EvalConfig(
        sweep="dpmpp_2m@karras:5,10; unipc_3 @ logsnr :5;"
        "dpmpp_3m@file:gs://bucket/grids/dpmpp_3m_10.json:10;ddim:4"
    )
    assert cfg.sweep_points("euler", 7) == (
        SweepPoint("dpmpp_2m", 5, "karras"),
        SweepPoint("dpmpp_2m", 10, "karras"),
        SweepPoint("unipc_3", 5, "logsnr"),
        SweepPoint("dpmpp_3m", 10, "file:gs://bucket/grids/dpmpp_3m_10.json"),
        SweepPoint("ddim", 4, ""),  # '' = sampler.spacing
    )


@pytest.mark.parametrize(
    "sweep",
    ["ddim", "ddim:", "ddim:0", ":10", "ddim:ten", "ddim@:10", "@karras:10", "ddim@file:a.json"],
)
def test_malformed_sweeps_are_refused_with_the_syntax(sweep):
    match = r"eval\.sweep=.*sampler\[@spacing\]:positive step counts; spacing a .* or file:PATH"
    with pytest.raises(ConfigError, match=match):
        schema.build(EvalConfig, {"sweep": sweep}, "eval")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"num_samples": 1}, "eval.num_samples"),
        ({"feature_network": "clip"}, "eval.feature_network"),
        ({"kid_subset_size": 1}, "eval.kid_subset_size"),
        ({"is_splits": 0}, "eval.is_splits"),
    ],
)
def test_bad_values_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        schema.build(EvalConfig, values, "eval")


def test_auto_picks_the_digits_network_for_digits_only(tmp_path):
    cfg = EvalConfig(stats_dir=str(tmp_path))
    assert cfg.network_name("digits") == "digits"
    assert cfg.network_name("cifar10") == "inception"
    assert cfg.inception_path() == str(tmp_path / "pt_inception-2015-12-05.safetensors")
