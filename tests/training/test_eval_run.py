"""--mode=eval_stats and --mode=eval on the digits U-Net: files, metrics, ordering, devices."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import grids
from evaluation import digits_network, metrics
from evaluation.statistics import FeatureStatistics
from tests.random_checkpoint import save_random_checkpoint
from training import eval_run, grid_files, loop
from training.evaluator import reference_path
from training.run_config import RunConfig

TRAIN_STEPS = 600
HELD_OUT = 360  # the digits network's held-out real images; every sample set has this size


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, workdir): the tiny digits U-Net after TRAIN_STEPS steps, and its reference."""
    from configs import digits_tiny

    root = tmp_path_factory.mktemp("eval")
    config = digits_tiny.get_config()
    config.num_train_steps = TRAIN_STEPS
    config.batch_size = 64
    config.log_every_steps = config.checkpoint_every_steps = TRAIN_STEPS
    config.sample_every_steps = 0
    config.model.dropout = 0.0
    config.sampler.num_steps = 20
    config.eval.stats_dir = str(root / "stats")
    config.eval.num_samples = config.eval.batch_size = HELD_OUT
    workdir = str(root / "run")
    loop.train_and_evaluate(config, workdir)
    eval_run.eval_stats(config)
    return config, workdir


def _fid_of_images(images01: np.ndarray, reference: FeatureStatistics) -> float:
    network = digits_network.load()
    features, _ = network.apply(network.params, jnp.asarray(images01, jnp.float32))
    stats = FeatureStatistics.empty(64).update(np.asarray(features, np.float64))
    return metrics.frechet_distance(
        stats.mean, stats.covariance, reference.mean, reference.covariance
    )


@pytest.mark.slow
def test_digits_fid_ranks_real_digits_then_trained_samples_then_untrained_and_noise(
    trained, tmp_path
):
    config, workdir = trained
    run = RunConfig.from_configdict(config)
    reference = FeatureStatistics.load(reference_path(run, digits_network.load()))
    assert reference.count == 1797 and reference.metadata["feature_network"] == "digits"
    _, (held_out, _) = digits_network.split_digits()
    real = _fid_of_images(held_out, reference)
    noise = np.round(np.random.default_rng(0).uniform(size=(HELD_OUT, 8, 8, 1)) * 255) / 255
    trained_fid = eval_run.evaluate_checkpoint(config, workdir)[0]["metrics"]["fid"]
    untrained_dir = str(tmp_path / "untrained")
    untrained_config = config.copy_and_resolve_references()
    untrained_config.num_train_steps = 1
    loop.train_and_evaluate(untrained_config, untrained_dir)
    untrained = eval_run.evaluate_checkpoint(untrained_config, untrained_dir)[0]["metrics"]["fid"]
    # Measured: real 2.1, trained (600 steps) 47.6, untrained ~500, uniform noise 803.
    assert real < 5.0 and 20.0 < trained_fid < 100.0, (real, trained_fid)
    assert untrained > 300.0 and _fid_of_images(noise, reference) > 500.0


@pytest.mark.slow
def test_eval_writes_a_record_per_sweep_point_and_8_devices_equal_1(trained):
    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.eval.sweep = "ddim:10,20;euler:10"
    config.eval.num_samples = 200
    config.eval.batch_size = 96  # chunks of 96, 96 and a partial 8
    records = eval_run.evaluate_checkpoint(config, workdir)
    assert [(r["sampler"], r["num_steps"]) for r in records] == [
        ("ddim", 10),
        ("ddim", 20),
        ("euler", 10),
    ]
    for record in records:
        path = os.path.join(
            workdir, "eval", f"{TRAIN_STEPS}_{record['sampler']}_{record['num_steps']}.json"
        )
        with open(path) as file:
            saved = json.load(file)
        assert saved["num_samples"] == 200 and saved["feature_network"] == "digits"
        assert set(saved["metrics"]) >= {"fid", "kid_mean", "precision", "recall", "confidence"}
        assert saved["reference"].endswith(".npz") and saved["wall_seconds"] > 0
    with open(os.path.join(workdir, "eval", f"{TRAIN_STEPS}_table.md")) as file:
        sweep_table, best_table = file.read().split("\n\n", 1)
    assert sweep_table.count("\n") == 1 + len(records)
    assert best_table.count("\n") == 4 + 2  # 10 NFE (ddim or euler) and 20 NFE (ddim)
    config.eval.sweep = "ddim:10"
    again = eval_run.evaluate_checkpoint(config, workdir)[0]  # same seed and settings
    for name, value in records[0]["metrics"].items():
        np.testing.assert_allclose(again["metrics"][name], value, rtol=1e-6, err_msg=name)
    one_device = eval_run.evaluate_checkpoint(config, workdir, devices=jax.devices()[:1])[0]
    for name, value in records[0]["metrics"].items():
        np.testing.assert_allclose(one_device["metrics"][name], value, rtol=1e-4, err_msg=name)


def test_two_grids_of_one_sampler_write_their_own_results_and_the_best_per_nfe(
    tiny_config, tmp_path
):
    schedule = RunConfig.from_configdict(tiny_config).diffusion.make_schedule()
    grid = str(tmp_path / "grids" / "ddim_4.json")
    grid_files.write_grid(grid, grids.log_snr_sigmas(*grids.train_sigmas(schedule)[[0, -1]], 4))
    tiny_config.eval.stats_dir = str(tmp_path / "stats")
    tiny_config.eval.num_samples = tiny_config.eval.batch_size = 16
    tiny_config.eval.sweep = f"ddim@karras:2,4;ddim@file:{grid}:4"
    workdir = str(tmp_path / "run")
    save_random_checkpoint(tiny_config, workdir)  # no train step to compile
    eval_run.eval_stats(tiny_config)
    records = eval_run.evaluate_checkpoint(tiny_config, workdir)
    names = ["ddim@karras_2", "ddim@karras_4", "ddim@ddim_4_4"]  # a grid file by its stem
    assert [r["nfe"] for r in records] == [2, 4, 4]
    assert [r["spacing"] for r in records] == ["karras", "karras", f"file:{grid}"]
    for name, record in zip(names, records, strict=True):
        with open(os.path.join(workdir, "eval", f"0_{name}.json")) as file:
            assert json.load(file) == json.loads(json.dumps(record))
    fids = [r["metrics"]["fid"] for r in records]
    assert fids[1] != fids[2]  # one sampler, one step count, two grids: two results
    best = eval_run.best_per_nfe(records)
    assert [(r["nfe"], r["metrics"]["fid"]) for r in best] == [(2, fids[0]), (4, min(fids[1:]))]
    with open(os.path.join(workdir, "eval", "0_table.md")) as file:
        table = file.read()
    winner = "karras" if fids[1] < fids[2] else "ddim_4"
    assert "Best sampler and grid per NFE budget (lowest fid" in table
    assert f"| 4 | ddim | {winner} | 4 | {min(fids[1:]):.4g} |" in table


def test_best_per_nfe_takes_the_lowest_fid_of_each_budget():
    def record(sampler, spacing, steps, nfe, fid):
        return {"sampler": sampler, "spacing": spacing, "num_steps": steps, "nfe": nfe,
                "metrics": {"fid": fid}}  # fmt: skip

    records = [
        record("heun", "karras", 3, 5, 9.0),  # heun: 2n - 1 evaluations
        record("dpmpp_2m", "karras", 5, 5, 7.5),
        record("dpmpp_2m", "file:runs/grids/dpmpp_2m_5.json", 5, 5, 6.25),
        record("ddim", "trailing", 10, 10, float("nan")),
        record("ddim", "karras", 10, 10, 4.0),
        record("dpmpp_2m", "karras", 3, 3, 20.0),
    ]
    best = eval_run.best_per_nfe(records)
    assert [(r["nfe"], r["sampler"], r["spacing"]) for r in best] == [
        (3, "dpmpp_2m", "karras"),
        (5, "dpmpp_2m", "file:runs/grids/dpmpp_2m_5.json"),
        (10, "ddim", "karras"),
    ]
    lines = eval_run.format_best_per_nfe(records).splitlines()
    assert lines[2:] == [
        "| NFE | sampler | grid | steps | fid |",
        "|---:|---|---|---:|---:|",
        "| 3 | dpmpp_2m | karras | 3 | 20 |",
        "| 5 | dpmpp_2m | dpmpp_2m_5 | 5 | 6.25 |",
        "| 10 | ddim | karras | 10 | 4 |",
    ]


@pytest.mark.slow
def test_text_model_eval_reports_accuracy_and_clip_score(tiny_config, tiny_clip_model, tmp_path):
    tiny_config.conditioning.kind = "text"  # the digits' captions
    tiny_config.text_encoder.name = "minilm"  # the shipped all-MiniLM-L6-v2
    tiny_config.eval.stats_dir = str(tmp_path / "stats")
    tiny_config.eval.num_samples = tiny_config.eval.batch_size = 64
    tiny_config.eval.clip_model = str(tiny_clip_model[0])
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(tiny_config, workdir)
    with pytest.raises(FileNotFoundError, match="--mode=eval_stats"):
        eval_run.evaluate_checkpoint(tiny_config, workdir)
    eval_run.eval_stats(tiny_config)
    values = eval_run.evaluate_checkpoint(tiny_config, workdir)[0]["metrics"]
    # The accuracy and CLIP score values themselves are checked in test_scores.py and
    # test_eval_sampling.py; here: both reach the record of a text model's evaluation.
    assert {"accuracy", "clip_score"} <= set(values) and values["num_samples"] == 64
    assert 0.0 <= values["accuracy"] <= 1.0 and 0.0 <= values["clip_score"] <= 100.0


@pytest.mark.slow
def test_in_loop_evaluation_logs_fid_against_steps(tiny_config, tmp_path):
    from tests.training.test_loop import _scalars

    tiny_config.eval_every_steps = 2
    tiny_config.eval.in_loop_num_samples = 48
    tiny_config.eval.batch_size = 32  # chunks of 32 and 16
    tiny_config.eval.stats_dir = str(tmp_path / "stats")
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(tiny_config, workdir)  # computes the missing reference first
    scalars = _scalars(workdir)
    assert [step for step, _ in scalars["eval/fid"]] == [2, 4]
    assert [value for _, value in scalars["eval/num_samples"]] == [48.0, 48.0]
    assert all(np.isfinite(v) and v > 0 for _, v in scalars["eval/fid"] + scalars["eval/kid_mean"])
    assert os.listdir(tmp_path / "stats")  # the reference statistics, made once and kept
