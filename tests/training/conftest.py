import hashlib
import pathlib

import jax
import jax.numpy as jnp
import pytest

from input_pipeline import pipeline
from tests.xla_optimisations import optimisations_off
from training import loop


def _counting_train_step(experiment, shardings):
    """Stands in for the real step in loop tests (a compile of milliseconds, not ten seconds):
    moves the step on and reports `nonfinite` = 1 for a batch with a NaN, as the real one does."""
    del experiment, shardings

    @jax.jit
    def step(state, batch, bank):
        del bank
        nonfinite = (~jnp.all(jnp.isfinite(batch["image"]))).astype(jnp.float32)
        loss = jnp.where(nonfinite > 0, jnp.nan, jnp.mean(jnp.square(batch["image"])))
        return state.replace(step=state.step + 1), {"loss": loss, "nonfinite": nonfinite}

    return step


@pytest.fixture
def fast_loop_config(smallest_config, monkeypatch):
    """smallest_config for loop tests: no sample grids, the counting step."""
    smallest_config.sample_every_steps = 0
    monkeypatch.setattr(loop, "make_train_step", _counting_train_step)
    with optimisations_off():  # the state init compiles faster
        yield smallest_config


@pytest.fixture
def batch_hooks(monkeypatch):
    """{step: fn(batch) -> batch}: changes (or acts on) the batch the loop draws for that step."""
    hooks = {}
    create = pipeline.create_train_iterator

    def hooked(*args, start_step: int = 0, **kwargs):
        batches = create(*args, start_step=start_step, **kwargs)
        for step, batch in enumerate(batches, start=start_step + 1):
            yield hooks[step](batch) if step in hooks else batch

    monkeypatch.setattr(pipeline, "create_train_iterator", hooked)
    return hooks


def _snapshot(root) -> dict[str, str]:
    """Every directory and file under `root`, files with the SHA-256 of their bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(pathlib.Path(root).rglob("*"))
    }


@pytest.fixture
def snapshot():
    """snapshot(dir): its listing and file hashes, to assert a directory was left untouched."""
    return _snapshot
