"""The training state pytree: everything a run's future depends on, saved whole by Orbax."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from models.functional import Params


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Parameters, their EMA, the optimizer state, the step and the run's base RNG key."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Params
    ema_params: Params
    opt_state: optax.OptState
    rng: jax.Array  # uint32 [2] raw key data; per-step keys are fold_in(rng, step)

    def replace(self, **changes: Any) -> TrainState:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def create_train_state(params: Params, optimizer: optax.GradientTransformation, seed: int):
    """A fresh state at step 0; the EMA starts equal to the initial parameters."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def step_key(state: TrainState) -> jax.Array:
    """The RNG key of the current step: a pure function of (seed, step), so resumes are exact."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
