import logging
import os

import jax
import numpy as np
import pytest

from configs import digits_tiny
from errors import ConfigError
from training import notebook
from training.notebook import Run, load_config


def _class_config():
    """digits_tiny, class-conditional (guidance applies), sampler padded to 8 steps."""
    config = digits_tiny.get_config()
    config.conditioning.kind = "class"
    config.sample_every_steps = 0
    config.sampler.max_steps = 8
    config.sampler.num_samples = 2
    config.sampler.class_labels = "0,1,2"
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fast_compiles):
    """A Run trained 4 steps (two summaries, checkpoints at 2 and 4) and its workdir."""
    workdir = str(tmp_path_factory.mktemp("notebook") / "run")
    run = Run(_class_config(), workdir)
    history = run.train()
    return run, history, workdir


def _messages(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def test_load_config_reads_a_file_and_copies_a_configdict():
    from_file = load_config("configs/digits_tiny.py")
    assert from_file.num_train_steps == digits_tiny.get_config().num_train_steps
    original = digits_tiny.get_config()
    copy = load_config(original)
    copy.model.base_channels = 99
    assert original.model.base_channels == 16  # overrides never leak into the caller's config
    with pytest.raises(FileNotFoundError, match="configs/nope.py"):
        load_config("configs/nope.py")


def test_bad_override_is_a_config_error_before_anything_compiles(tmp_path):
    with pytest.raises(ConfigError, match="sampler.nmae"):
        Run("configs/digits_tiny.py", str(tmp_path / "run"), **{"sampler.nmae": "ddim"})
    with pytest.raises(ConfigError, match="nosection"):
        Run("configs/digits_tiny.py", str(tmp_path / "run"), **{"nosection.x": 1})
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_log_filter_keeps_project_lines_and_library_warnings():
    keep = notebook._ProjectLogFilter()

    def record(path, level):
        return logging.LogRecord("absl", level, path, 1, "m", (), None)

    ours = os.path.join(notebook._REPO_ROOT, "training", "loop.py")
    library = "/usr/lib/python3/site-packages/orbax/checkpoint/manager.py"
    assert keep.filter(record(ours, logging.INFO))
    assert not keep.filter(record(library, logging.INFO))
    assert keep.filter(record(library, logging.WARNING))


@pytest.mark.slow
def test_train_returns_the_history_and_says_when_there_is_nothing_to_do(trained, caplog):
    run, history, workdir = trained
    assert [entry["step"] for entry in history] == [2, 4]
    assert all(np.isfinite(entry["loss"]) for entry in history)
    assert run.step == 4 and int(jax.device_get(run.state.step)) == 4
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    with caplog.at_level(logging.INFO):
        assert run.train() == []  # already at num_train_steps
    assert "At step 4 of num_train_steps=4; nothing to do" in _messages(caplog)


@pytest.mark.slow
def test_sweeping_guidance_steps_and_labels_reuses_one_compile(trained):
    run, _, _ = trained
    before = run.compile_count
    first = run.sample(num_steps=8, guidance_scale=1.0)
    assert first.shape == (6, 8, 8, 1) and np.all(np.abs(first) <= 1.0)
    assert run.compile_count == before + 1
    guided = run.sample(num_steps=8, guidance_scale=4.0)
    fewer = run.sample(num_steps=3, guidance_scale=1.0)
    relabelled = run.sample(num_steps=8, guidance_scale=1.0, class_labels=[7, 8, 9])
    assert run.compile_count == before + 1  # scale, step count <= max_steps, labels: traced
    for other in (guided, fewer, relabelled):
        assert not np.allclose(other, first)
    again = run.sample(num_steps=8, guidance_scale=1.0)
    np.testing.assert_array_equal(again, first)  # same seed, same images
    run.sample("dpmpp_2m", num_steps=4)
    assert run.compile_count == before + 2  # another sampler is another program


@pytest.mark.slow
def test_sample_current_params_differ_from_ema_and_grids_label_rows(trained):
    run, _, _ = trained
    ema = run.sample(num_steps=4, seed=3)
    current = run.sample(num_steps=4, seed=3, params="current")
    assert not np.allclose(ema, current)
    picture = run.grid(current)
    cell = 64  # 8 px digits are enlarged 8x
    assert picture.size[1] >= 3 * cell  # one row per class label
    with pytest.raises(ValueError, match="params='best'"):
        run.sample(params="best")
    with pytest.raises(ConfigError, match="sampler.name"):
        run.sample("not_a_sampler")


@pytest.mark.slow
def test_a_new_run_on_the_workdir_resumes_and_train_goes_on(trained, caplog):
    run, _, workdir = trained
    with caplog.at_level(logging.INFO):
        again = Run(_class_config(), workdir)
    assert f"Resumed {workdir} at step 4" in _messages(caplog)
    assert again.step == 4
    for saved, restored in zip(
        jax.tree.leaves(run.state.params), jax.tree.leaves(again.state.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(restored))
    more = again.train(2, progress=False)  # past num_train_steps: allowed, N more steps
    assert [entry["step"] for entry in more] == [6]
    assert again.save() == 6
    assert "6" in os.listdir(os.path.join(workdir, "checkpoints"))


@pytest.mark.slow
def test_evaluate_scores_the_requested_number_of_samples(trained):
    run, _, _ = trained
    ema = run.evaluate(num_samples=32)
    assert ema["eval/num_samples"] == 32 and ema["eval/num_reference"] == 1797
    assert np.isfinite(ema["eval/fid"]) and ema["eval/fid"] > 0
    current = run.evaluate(num_samples=32, params="current")
    assert current["eval/fid"] != ema["eval/fid"]  # other parameters, other samples


@pytest.mark.slow
def test_prompts_for_an_unconditional_model_are_refused_by_name(tmp_path, fast_compiles):
    config = digits_tiny.get_config()
    config.num_train_steps = 0
    run = Run(config, str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="prompts given, but conditioning.kind='none'"):
        run.sample(prompts=["a seven"])
