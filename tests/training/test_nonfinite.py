"""training.nonfinite_policy: skipped NaN steps are counted ("skip") or stop the run before any
checkpoint is written after them ("stop"). The step's own guard is in test_train_step.py."""

import logging
import os

import numpy as np
import pytest

from tests.training.test_loop import _scalars
from training import loop, nonfinite


def _poison(batch):
    return {**batch, "image": np.full_like(batch["image"], np.nan)}


def test_skip_policy_finishes_and_counts_the_skipped_steps(
    fast_loop_config, batch_hooks, tmp_path, caplog
):
    config = fast_loop_config
    config.num_train_steps, config.log_every_steps = 6, 3
    batch_hooks.update({2: _poison, 5: _poison})
    caplog.set_level(logging.WARNING)
    workdir = str(tmp_path / "run")
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 6
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6"]  # keep 2
    skipped = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(skipped) == 2
    assert "(steps 2); 1 skipped so far" in skipped[0]
    assert "(steps 5); 2 skipped so far" in skipped[1]
    scalars = _scalars(workdir)
    assert scalars["skipped_steps"] == [(3, 1.0), (6, 1.0)]
    assert all(np.isfinite(v) for _, v in scalars["loss"])  # the mean over the finite steps
    assert "nonfinite" not in scalars


@pytest.mark.slow
@pytest.mark.parametrize("log_every_steps", [3, 100], ids=["at_the_log", "before_the_save"])
def test_stop_policy_raises_and_leaves_the_checkpoints_alone(
    fast_loop_config, batch_hooks, snapshot, tmp_path, log_every_steps
):
    config = fast_loop_config
    config.num_train_steps = 2
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir)  # a healthy start: checkpoint 2
    checkpoints = os.path.join(workdir, "checkpoints")
    before = snapshot(checkpoints)
    assert sorted(os.listdir(checkpoints)) == ["2"]

    config.num_train_steps, config.log_every_steps = 6, log_every_steps
    config.training.nonfinite_policy = "stop"
    batch_hooks[3] = _poison  # found by the step-3 fetch, or by the check before saving step 4
    with pytest.raises(nonfinite.NonFiniteLossError) as raised:
        loop.train_and_evaluate(config, workdir)
    message = str(raised.value)
    assert "Non-finite loss or gradient norm at step 3" in message
    assert f"the last good checkpoint is step 2 in {checkpoints}" in message
    assert snapshot(checkpoints) == before  # nothing written, nothing removed


def test_guard_counts_or_raises_on_host_flags(tmp_path):
    class Manager:  # what the guard reads of a CheckpointManager
        directory = tmp_path / "checkpoints"

        def wait_until_finished(self):
            pass

        def latest_step(self):
            return None

    skip = nonfinite.NonFiniteGuard("skip", Manager())
    assert skip.check([1, 2, 3], [0.0, 0.0, 0.0]) == 0
    assert skip.check([4, 5, 6], [1.0, 0.0, 1.0]) == 2 and skip.skipped == 2
    stop = nonfinite.NonFiniteGuard("stop", Manager())
    with pytest.raises(nonfinite.NonFiniteLossError, match="at step 5 .* no checkpoint was saved"):
        stop.check([4, 5, 6], [0.0, 1.0, 1.0])
