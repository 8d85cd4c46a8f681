"""Orbax checkpoints of the TrainState in `workdir/checkpoints`: save every N steps, keep K.

Restoring tries the newest checkpoint first and falls back to older ones when one does not read
back (truncated or corrupt files); nothing here deletes or rewrites a checkpoint. Saves that never
finished (`<step>.orbax-checkpoint-tmp*` directories) are not steps to Orbax at all.
"""

from __future__ import annotations

import os
import tempfile
import uuid

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

import errors
import paths
from training.train_state import TrainState

MAX_LISTED = 5  # mismatching arrays spelled out in a shape-mismatch error


class CheckpointRestoreError(RuntimeError):
    """No checkpoint in the directory could be restored (all of them failed to read)."""


def make_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
    """A CheckpointManager with async saves (waited for at exit) and atomic finalisation, in
    `workdir`/checkpoints (local or remote, e.g. "gs://bucket/run")."""
    directory = os.path.join(paths.absolute(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=True,
        create=True,
    )
    # The handler named up front, so `item_metadata` can read shapes before any restore.
    return ocp.CheckpointManager(
        directory, item_handlers={"state": ocp.StandardCheckpointHandler()}, options=options
    )


def save(manager: ocp.CheckpointManager, state: TrainState, *, force: bool = False) -> bool:
    """Starts saving `state` at its step (asynchronously); returns whether a save started.

    A step already on disk (one that failed to restore and was kept) is left as it is.
    """
    step = int(jax.device_get(state.step))
    if step in manager.all_steps():
        logging.warning(
            "Not saving step %d: %s already holds a checkpoint for it (left untouched).",
            step,
            manager.directory,
        )
        return False
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
    """Restores the newest checkpoint that reads back into `abstract_state`'s layout, or None.

    Steps are tried newest first; one that fails to read is logged and skipped (never deleted).
    Raises errors.ConfigError, before reading any array, if the checkpoint's shapes or dtypes
    differ from `abstract_state`, and CheckpointRestoreError if no checkpoint restores.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    failures: list[str] = []
    for step in steps:
        logging.info("Restoring checkpoint at step %d from %s", step, manager.directory)
        try:
            saved = manager.item_metadata(step).state
            if saved is not None:
                check_compatible(saved, abstract_state, step, manager.directory)
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
            return restored.state
        except errors.ConfigError:
            raise
        except Exception as error:  # corrupt or truncated files: any reader error
            failures.append(f"step {step} ({_describe_error(error)})")
            logging.warning(
                "Checkpoint at step %d in %s failed to restore and is left in place (%s)%s",
                step,
                manager.directory,
                _describe_error(error),
                "; trying the previous one." if step != steps[-1] else ".",
            )
    if failures:
        raise CheckpointRestoreError(
            f"No checkpoint in {manager.directory} could be restored; tried "
            + "; ".join(failures)
            + ". They are left untouched: move them away or use a fresh --workdir."
        )
    return None


def _describe_error(error: Exception) -> str:
    """'ValueError: <message>' without TensorStore's long spec dump."""
    message = str(error).split(" [tensorstore_spec=")[0]
    return f"{type(error).__name__}: {message[:1000]}"


def leaf_specs(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """{"params.dense.kernel": (shape, dtype name)} for every array leaf (state or metadata)."""
    return {
        ".".join(_key_name(key) for key in path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _key_name(key) -> str:
    """'kernel' for DictKey('kernel'), GetAttrKey('kernel'); '0' for SequenceKey(0)."""
    for field in ("key", "name", "idx"):
        if hasattr(key, field):
            return str(getattr(key, field))
    return str(key)


def check_compatible(saved_metadata, abstract_state: TrainState, step: int, directory) -> None:
    """Raises errors.ConfigError listing the arrays whose checkpoint shape / dtype differ."""
    saved = leaf_specs(getattr(saved_metadata, "tree", saved_metadata))
    wanted = leaf_specs(abstract_state)
    describe = lambda spec: "absent" if spec is None else f"{spec[0]} {spec[1]}"
    mismatches = [
        f"  {name}: checkpoint {describe(saved.get(name))} vs config {describe(wanted.get(name))}"
        for name in [*wanted, *(name for name in saved if name not in wanted)]
        if saved.get(name) != wanted.get(name)
    ]
    if mismatches:
        raise errors.ConfigError(
            f"The checkpoint at step {step} in {directory} does not fit this config: "
            f"{len(mismatches)} array(s) differ, e.g.\n"
            + "\n".join(mismatches[:MAX_LISTED])
            + "\nThe checkpoint is left untouched. Train this config in a fresh --workdir "
            "(or run the config that wrote the checkpoint)."
        )


def validate_workdir(workdir: str | os.PathLike) -> None:
    """Creates `workdir` if it is missing and checks that this process can write into it.

    A remote one ("gs://bucket/run") is checked by writing and deleting a small file in it, so a
    missing bucket or permission fails here, before anything compiles.
    """
    path = os.fspath(workdir) if isinstance(workdir, str | os.PathLike) else None
    if not path or not path.strip():
        raise errors.ConfigError(f"--workdir={workdir!r} must name a directory.")
    if paths.is_remote(path):
        _probe_remote(path)
        return
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise errors.ConfigError(
            f"--workdir={path!r} is not a writable directory ({err.strerror or err}); allowed: "
            "a directory this process can create and write to."
        ) from err


def _probe_remote(workdir: str) -> None:
    """Writes and deletes `<workdir>/.write_probe_<random>`; ConfigError when that fails."""
    probe = paths.as_path(workdir) / f".write_probe_{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except Exception as err:  # gcsfs / gfile raise many kinds (auth, HTTP, missing bucket)
        raise errors.ConfigError(
            f"--workdir={workdir!r} cannot be written ({type(err).__name__}: {err}); allowed: a "
            "local directory, or a Cloud Storage path (gs://bucket/dir) this process can write "
            "to (see docs/scaling.md for credentials and the variables)."
        ) from err
