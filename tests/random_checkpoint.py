"""A checkpoint without training, for tests of what reads one (eval, grid search, sampling)."""

import jax
import numpy as np

from training import checkpointing, loop
from training.experiment import build_experiment


def save_random_checkpoint(config, workdir: str, scale: float = 0.1) -> None:
    """Saves step 0 of `config` with its EMA parameters perturbed on the host by N(0, scale):
    no train step to compile, and no zero-initialised output layer (which would map every
    sampler and grid to the same samples)."""
    state, _ = loop.create_state(build_experiment(config), seed=0)
    rng = np.random.default_rng(1)

    def perturbed(leaf):
        noise = rng.normal(0.0, scale, leaf.shape).astype(leaf.dtype)
        return jax.device_put(np.asarray(leaf) + noise, leaf.sharding)

    manager = checkpointing.make_manager(workdir, 1)
    ema = jax.tree.map(perturbed, state.ema_params)
    checkpointing.save(manager, state.replace(ema_params=ema), force=True)
    manager.wait_until_finished()
