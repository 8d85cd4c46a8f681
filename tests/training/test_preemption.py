"""SIGTERM during training: checkpoint the current step, return normally, resume from there."""

import inspect
import logging
import os
import signal

import pytest
from jax.experimental import multihost_utils

from training import checkpointing, loop, preemption


@pytest.fixture
def sentinel_handler():
    """A SIGTERM handler of the test's own, to see that the loop puts it back (and that it
    never runs while the loop's watcher is installed)."""
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    yield signal.getsignal(signal.SIGTERM), calls
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_sigterm_mid_run_saves_that_step_and_returns(
    fast_loop_config, batch_hooks, sentinel_handler, tmp_path, caplog
):
    handler, calls = sentinel_handler
    config = fast_loop_config
    config.num_train_steps = 6
    # The hook runs when step 3's batch is drawn: just before step 3 only when batches are not
    # drawn ahead for the devices.
    config.data.device_prefetch = 0

    def preempt(batch):  # the scheduler's notice arrives while step 3 runs
        os.kill(os.getpid(), signal.SIGTERM)
        return batch

    batch_hooks[3] = preempt
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="absl")  # an earlier test may have left it at WARNING
    workdir = str(tmp_path / "run")
    state = loop.train_and_evaluate(config, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    assert int(state.step) == 3
    assert sorted(os.listdir(checkpoints)) == ["2", "3"]
    lines = [r.getMessage() for r in caplog.records if "Preempted" in r.getMessage()]
    assert lines == [f"Preempted: saved checkpoint at step 3 in {checkpoints}"]
    assert signal.getsignal(signal.SIGTERM) is handler and calls == []

    del batch_hooks[3]  # the rescheduled job resumes at step 3 and finishes
    caplog.clear()
    assert int(loop.train_and_evaluate(config, workdir).step) == 6
    assert "Restoring checkpoint at step 3" in caplog.text
    assert sorted(os.listdir(checkpoints)) == ["4", "6"]


@pytest.mark.slow
def test_sigterm_while_the_final_save_finishes_still_returns_with_it_written(
    fast_loop_config, sentinel_handler, tmp_path, monkeypatch
):
    handler, calls = sentinel_handler
    config = fast_loop_config
    config.num_train_steps = 4
    real_make_manager = checkpointing.make_manager

    def make_manager(*args, **kwargs):
        manager = real_make_manager(*args, **kwargs)
        real_wait = manager.wait_until_finished

        def wait_after_sigterm():  # the notice lands while the last async save is in flight
            if inspect.stack()[1].function == "_train":  # the loop's final wait, not a save's
                os.kill(os.getpid(), signal.SIGTERM)
            real_wait()

        manager.wait_until_finished = wait_after_sigterm
        return manager

    monkeypatch.setattr(checkpointing, "make_manager", make_manager)
    workdir = str(tmp_path / "run")
    assert int(loop.train_and_evaluate(config, workdir).step) == 4
    assert "4" in os.listdir(os.path.join(workdir, "checkpoints"))
    assert signal.getsignal(signal.SIGTERM) is handler and calls == []


@pytest.mark.slow
def test_sigterm_during_start_up_checkpoints_the_first_step(
    fast_loop_config, sentinel_handler, tmp_path, monkeypatch, caplog
):
    handler, calls = sentinel_handler
    config = fast_loop_config
    config.num_train_steps = 6
    real_build = loop.build_experiment

    def build_then_sigterm(config):  # the notice lands while the run is still being built
        os.kill(os.getpid(), signal.SIGTERM)
        return real_build(config)

    monkeypatch.setattr(loop, "build_experiment", build_then_sigterm)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="absl")  # an earlier test may have left it at WARNING
    workdir = str(tmp_path / "run")
    assert int(loop.train_and_evaluate(config, workdir).step) == 1
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]
    assert "Preempted: saved checkpoint at step 1" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is handler and calls == []


def test_watcher_only_sets_a_flag_and_restores_the_handler_on_error(sentinel_handler):
    handler, calls = sentinel_handler
    with pytest.raises(KeyError):
        with preemption.PreemptionWatcher(process_count=1) as watcher:
            assert signal.getsignal(signal.SIGTERM) is not handler
            assert not watcher.requested() and not watcher.should_stop(1)
            os.kill(os.getpid(), signal.SIGTERM)
            assert watcher.requested() and watcher.should_stop(2)
            raise KeyError("the loop failed")
    assert signal.getsignal(signal.SIGTERM) is handler and calls == []


def test_single_process_never_asks_the_preemption_service(monkeypatch):
    def unavailable(step):
        raise AssertionError("needs jax.distributed")

    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", unavailable)
    with preemption.PreemptionWatcher(process_count=1) as watcher:
        assert not watcher.should_stop(1)


def test_multi_process_stops_at_the_agreed_step_without_its_own_handler(
    monkeypatch, sentinel_handler
):
    handler, _ = sentinel_handler
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: step == 5)
    with preemption.PreemptionWatcher(process_count=2) as watcher:
        assert signal.getsignal(signal.SIGTERM) is handler  # JAX's service owns SIGTERM
        assert [watcher.should_stop(step) for step in range(3, 7)] == [False, False, True, False]


def test_multi_process_without_the_service_warns_once_and_runs_on(monkeypatch, caplog):
    def unavailable(step):
        raise RuntimeError("Preemption sync manager has not been initialized.")

    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", unavailable)
    with preemption.PreemptionWatcher(process_count=2) as watcher:
        assert not any(watcher.should_stop(step) for step in range(1, 4))
    warnings = [r for r in caplog.records if "Preemption sync unavailable" in r.getMessage()]
    assert len(warnings) == 1
