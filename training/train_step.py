"""The pure train step: noise-prediction loss, gradients, optax update, EMA."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from diffusion import flow, losses
from diffusion.schedules import NoiseSchedule
from models.functional import FunctionalModel
from training import conditioning
from training.train_state import TrainState, step_key


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step (hashable, so the step compiles once)."""

    prediction: str = "eps"
    ema_decay: float = 0.9999
    process: str = "ddpm"  # "ddpm": noise-prediction loss; "flow": velocity (flow matching)
    conditioning: str = "none"  # none | class | text (see training/conditioning.py)
    cond_dropout: float = 0.0  # chance of the null condition per example (CFG training)
    null_id: int = 0  # id of the null condition (class count, or the bank's empty prompt)


def ema_update(ema_params, params, decay: float):
    """ema <- decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    bank: conditioning.TextBank | None = None,
    *,
    model: FunctionalModel,
    schedule: NoiseSchedule,
    optimizer: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    config: StepConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the global batch; returns the new state and scalar metrics.

    `bank` holds the text embeddings that text-conditioned batches index by `caption_id`.
    """
    key = step_key(state)
    loss_key, dropout_key = jax.random.split(key)
    cond = conditioning.batch_conditions(
        config.conditioning,
        batch,
        bank,
        jax.random.fold_in(key, 2),
        config.cond_dropout,
        config.null_id,
    )

    def loss_fn(params):
        def model_fn(x_t, t):
            return model.apply(params, x_t, t, dropout_key=dropout_key, **cond)

        with jax.named_scope("diffusion_loss"):
            if config.process == "flow":
                return flow.flow_matching_loss(model_fn, batch["image"], loss_key)
            return losses.noise_prediction_loss(
                model_fn, schedule, batch["image"], loss_key, config.prediction
            )

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=ema_update(state.ema_params, params, config.ema_decay),
        opt_state=opt_state,
    )
    metrics = {
        **aux,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
    }
    return new_state, metrics


def jit_train_step(
    state_sharding,
    batch_sharding,
    metrics_sharding,
    **static,
):
    """Compiles `train_step` once with explicit in/out shardings and the state buffers donated.

    The step is called as `step(state, batch, bank)`; the text bank (or None) is replicated.
    """
    step = functools.partial(train_step, **static)
    replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        step,
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, metrics_sharding),
        donate_argnums=0,
    )
