"""Orbax checkpoints of the TrainState in `workdir/checkpoints`: save every N steps, keep K."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging

from training.train_state import TrainState


def make_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
    """A CheckpointManager with async saves (waited for at exit) and atomic finalisation."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=True,
        create=True,
    )
    return ocp.CheckpointManager(directory, item_names=("state",), options=options)


def save(manager: ocp.CheckpointManager, state: TrainState, *, force: bool = False) -> bool:
    """Starts saving `state` at its step (asynchronously); returns whether a save started."""
    step = int(jax.device_get(state.step))
    return manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force
    )


def abstract_like(state_shapes: TrainState, state_shardings) -> TrainState:
    """ShapeDtypeStructs carrying the target shardings, to restore straight into place."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        state_shapes,
        state_shardings,
    )


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState) -> TrainState | None:
    """Restores the newest complete checkpoint into `abstract_state`'s layout, or None if none."""
    step = manager.latest_step()
    if step is None:
        return None
    logging.info("Restoring checkpoint at step %d from %s", step, manager.directory)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )
    return restored.state
