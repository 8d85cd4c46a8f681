import json
import logging
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import errors
import sharding
from configs import digits_ddpm, digits_flow
from diffusion import losses
from input_pipeline.digits import load_digits_images
from training import checkpointing, loop
from training.experiment import build_experiment
from training.train_state import TrainState, create_train_state


def _state_and_shardings(mesh):
    params = {"dense": {"kernel": jnp.arange(32.0).reshape(4, 8)}, "bias": jnp.ones(8)}
    logical = {"dense": {"kernel": P("embed", "mlp")}, "bias": P("mlp")}
    opt = optax.adam(1e-3)
    state = create_train_state(params, opt, seed=3)
    param_sh = sharding.param_shardings(params, logical, mesh, sharding.rules_for(mesh))
    shardings = TrainState(
        step=sharding.replicated(mesh),
        params=param_sh,
        ema_params=param_sh,
        opt_state=sharding.shard_like_params(
            state.opt_state, param_sh, jax.tree.structure(params), mesh
        ),
        rng=sharding.replicated(mesh),
    )
    return jax.device_put(state, shardings), shardings


def test_save_then_restore_round_trips_with_shardings(tmp_path):
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    state, shardings = _state_and_shardings(mesh)
    state = state.replace(
        step=jnp.array(7, jnp.int32), ema_params=jax.tree.map(lambda x: x * 2, state.params)
    )
    manager = checkpointing.make_manager(str(tmp_path), max_to_keep=2)
    assert checkpointing.restore_latest(manager, state) is None
    checkpointing.save(manager, state, force=True)
    manager.wait_until_finished()

    fresh = checkpointing.make_manager(str(tmp_path), max_to_keep=2)
    abstract = checkpointing.abstract_like(jax.eval_shape(lambda: state), shardings)
    restored = checkpointing.restore_latest(fresh, abstract)
    assert isinstance(restored, TrainState) and int(restored.step) == 7
    assert restored.params["dense"]["kernel"].sharding.spec == P(None, "fsdp")
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert type(restored.opt_state[0]) is type(state.opt_state[0])


def test_keeps_only_the_newest_k(tmp_path):
    mesh = sharding.make_mesh(sharding.MeshConfig())
    state, _ = _state_and_shardings(mesh)
    manager = checkpointing.make_manager(str(tmp_path), max_to_keep=2)
    for step in (1, 2, 3):
        checkpointing.save(manager, state.replace(step=jnp.array(step, jnp.int32)), force=True)
    manager.wait_until_finished()
    assert list(manager.all_steps()) == [2, 3]


def _truncate_data_files(step_dir: pathlib.Path) -> None:
    """What a save cut off mid-write or a damaged disk leaves: empty array chunk files."""
    data_files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for path in data_files:
        path.write_bytes(b"")


def _saved_steps(tmp_path, steps) -> tuple[TrainState, TrainState]:
    """Saves the test state at each of `steps`; returns its abstract form (for restoring)."""
    mesh = sharding.make_mesh(sharding.MeshConfig())
    state, shardings = _state_and_shardings(mesh)
    manager = checkpointing.make_manager(str(tmp_path), max_to_keep=5)
    for step in steps:
        checkpointing.save(manager, state.replace(step=jnp.array(step, jnp.int32)), force=True)
    manager.wait_until_finished()
    return checkpointing.abstract_like(jax.eval_shape(lambda: state), shardings), state


# After a failed read, TensorStore callbacks may reach Orbax's closed event loop ("Event loop
# is closed", printed and ignored); the restore itself has already failed cleanly.
reader_noise = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@reader_noise
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one_and_is_kept(
    tmp_path, caplog, snapshot
):
    abstract, state = _saved_steps(tmp_path, (2, 4))
    corrupt = tmp_path / "checkpoints" / "4"
    _truncate_data_files(corrupt)
    before = snapshot(corrupt)
    caplog.set_level(logging.INFO)
    manager = checkpointing.make_manager(str(tmp_path), max_to_keep=5)
    restored = checkpointing.restore_latest(manager, abstract)
    assert int(restored.step) == 2
    np.testing.assert_array_equal(restored.params["bias"], state.params["bias"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step 4" in w and "failed to restore" in w for w in warnings), warnings
    assert f"Restoring checkpoint at step 2 from {manager.directory}" in caplog.text
    assert snapshot(corrupt) == before  # neither deleted nor rewritten
    # Training on from step 2 reaches step 4 again: that save leaves the kept one alone.
    assert not checkpointing.save(manager, state.replace(step=jnp.array(4, jnp.int32)))
    manager.wait_until_finished()
    assert snapshot(corrupt) == before


@reader_noise
def test_no_restorable_checkpoint_raises_naming_every_step_tried(tmp_path):
    abstract, _ = _saved_steps(tmp_path, (2, 4))
    for step in ("2", "4"):
        _truncate_data_files(tmp_path / "checkpoints" / step)
    manager = checkpointing.make_manager(str(tmp_path), max_to_keep=5)
    with pytest.raises(checkpointing.CheckpointRestoreError, match=r"step 4 .*step 2 "):
        checkpointing.restore_latest(manager, abstract)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


@reader_noise
@pytest.mark.parametrize("partial", ["tmp_dir", "final_dir_without_commit"])
def test_unfinished_save_is_not_restored(tmp_path, partial):
    """Orbax writes `<step>.orbax-checkpoint-tmp` and renames it once complete (local disks;
    object stores mark completion with commit_success.txt). A tmp directory is not a step at
    all; a step directory whose files were cut short fails to read and is skipped."""
    abstract, _ = _saved_steps(tmp_path, (2,))
    checkpoints = tmp_path / "checkpoints"
    name = "4.orbax-checkpoint-tmp" if partial == "tmp_dir" else "4"
    shutil.copytree(checkpoints / "2", checkpoints / name)
    for marker in (checkpoints / name).rglob("commit_success.txt"):
        marker.unlink()
    _truncate_data_files(checkpoints / name)
    manager = checkpointing.make_manager(str(tmp_path), max_to_keep=5)
    assert list(manager.all_steps()) == ([2] if partial == "tmp_dir" else [2, 4])
    assert int(checkpointing.restore_latest(manager, abstract).step) == 2
    assert (checkpoints / name).is_dir()


def test_shape_mismatch_raises_before_restoring_and_leaves_the_checkpoint(tmp_path, snapshot):
    _, state = _saved_steps(tmp_path, (2,))
    before = snapshot(tmp_path / "checkpoints")
    # The config now asks for a wider layer: kernel [4, 16], bias [16].
    wider = {"dense": {"kernel": jnp.zeros((4, 16))}, "bias": jnp.zeros(16)}
    abstract = jax.eval_shape(lambda: create_train_state(wider, optax.adam(1e-3), seed=3))
    manager = checkpointing.make_manager(str(tmp_path), max_to_keep=5)
    with pytest.raises(errors.ConfigError) as raised:
        checkpointing.restore_latest(manager, abstract)
    message = str(raised.value)
    assert "params.dense.kernel: checkpoint (4, 8) float32 vs config (4, 16) float32" in message
    assert "left untouched" in message and "fresh --workdir" in message
    assert "step 2" in message
    assert snapshot(tmp_path / "checkpoints") == before


def test_workdir_is_created_and_must_be_writable(tmp_path):
    workdir = tmp_path / "runs" / "a"
    checkpointing.validate_workdir(str(workdir))
    assert workdir.is_dir() and os.listdir(workdir) == []  # the write probe leaves nothing
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(
        errors.ConfigError, match=rf"--workdir='{blocker}/run' is not a writable dir"
    ):
        checkpointing.validate_workdir(str(blocker / "run"))
    with pytest.raises(errors.ConfigError, match=r"--workdir='' must name a directory"):
        checkpointing.validate_workdir("")
    # gs:// workdirs are probed against a local Cloud Storage server in tests/test_gcs.py.


def test_training_refuses_an_unwritable_workdir_first(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(
        errors.ConfigError, match=r"--workdir=.*file/run' is not a writable directory"
    ):
        loop.train_and_evaluate(digits_ddpm.get_config(), str(blocker / "run"))


BEFORE = pathlib.Path(__file__).resolve().parents[1] / "data" / "checkpoints_before_run_config"


def _compat_config(module):
    """The settings the checkpoints in tests/data/checkpoints_before_run_config were made with."""
    config = module.get_config()
    config.update(num_train_steps=3, batch_size=16, sample_every_steps=0, max_checkpoints_to_keep=1)
    config.model.update(
        base_channels=8,
        channel_mult=(1,),
        num_res_blocks=1,
        attention_resolutions=(),
        num_heads=1,
        num_groups=4,
        dropout=0.0,
    )
    config.optimizer.warmup_steps = 0
    return config


@pytest.mark.parametrize("name,module", [("ddpm", digits_ddpm), ("flow", digits_flow)])
def test_checkpoints_of_earlier_runs_restore_and_give_the_same_loss(name, module, tmp_path):
    """A checkpoint from before the run config / precond change restores into today's state,
    and the loss on a fixed batch and key equals what the earlier code computed (1e-6)."""
    workdir = tmp_path / name
    shutil.copytree(BEFORE / name, workdir)
    experiment = build_experiment(_compat_config(module))
    manager = checkpointing.make_manager(str(workdir), 1)
    state, _ = loop.init_or_restore(experiment, manager, seed=0)
    assert int(jax.device_get(state.step)) == 3
    images = jnp.asarray(load_digits_images()[0][:16], jnp.float32)
    params = jax.device_get(state.ema_params)
    config = experiment.step_config
    draws = losses.draw_noise(
        jax.random.key(123), images, experiment.schedule, config.process, config.time_sampling
    )
    loss, _ = losses.diffusion_loss(
        lambda x, t: experiment.model.apply(params, x, t), images, draws, config.precond
    )
    expected = json.loads((BEFORE / "losses_before.json").read_text())[name]
    assert float(loss) == pytest.approx(expected, rel=1e-6)
