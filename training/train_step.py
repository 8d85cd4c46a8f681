"""The pure train step: noise-prediction loss, gradients (optionally accumulated over
micro-batches), optax update, EMA."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import struct

import sharding
from diffusion import losses
from diffusion.precond import Precond
from diffusion.processes import TimeSampling
from diffusion.schedules import NoiseSchedule
from diffusion.weighting import Weighting
from models.autoencoder import AutoencoderConfig
from models.functional import FunctionalModel
from training import conditioning
from training.autoencoder_step import autoencoder_loss
from training.latent import LatentSpace
from training.train_state import TrainState, step_key


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step (hashable, so the step compiles once)."""

    precond: Precond = Precond()  # the network's parameterisation: target of the loss
    weighting: Weighting = Weighting()  # loss weighting over noise levels
    time_sampling: TimeSampling = TimeSampling()  # how noise levels are drawn
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # the EMA decay ramps up with the step (see ema_decay_at)
    process: str = "ddpm"  # "ddpm": VP schedule; "flow": rectified flow
    conditioning: str = "none"  # none | class | text (see training/conditioning.py)
    cond_dropout: float = 0.0  # chance of the null condition per example (CFG training)
    null_id: int = 0  # id of the null condition (class count, or the bank's empty prompt)
    grad_accumulation_steps: int = 1  # micro-batches per optimizer step (one lax.scan)
    # model.name='autoencoder': its config (the loss is reconstruction + kl_weight * KL).
    autoencoder: AutoencoderConfig | None = None
    kl_weight: float = 0.0
    latent: LatentSpace | None = None  # latent diffusion: the frozen encoder before the loss


@struct.dataclass
class FrozenInputs:
    """What the step reads but never trains, passed replicated: the text bank of a
    text-conditioned run and the frozen autoencoder's params of a latent one."""

    bank: conditioning.TextBank | None = None
    autoencoder: dict | None = None


def ema_update(ema_params, params, decay: float | jax.Array):
    """ema <- decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> float | jax.Array:
    """The EMA decay of the update made at `step` (the optimizer steps taken before it).

    Without warm-up, `decay` itself (a constant, as before). With it, diffusers' `EMAModel.
    get_decay` (training_utils.py; use_ema_warmup=False, update_after_step=0, min_decay=0):
    0 at step 0 (the first update copies the params), then min(decay, (1 + s) / (10 + s)), so
    the random init is forgotten within tens of steps. (k-diffusion's `EMAWarmup`, diffusers'
    use_ema_warmup=True, is the power schedule 1 - (1 + s / inv_gamma) ** -power instead.)
    A function of the state's step alone, traced: no recompile, and resumes stay exact.
    """
    if not warmup:
        return decay
    s = step.astype(jnp.float32)
    return jnp.where(step > 0, jnp.minimum(decay, (1.0 + s) / (10.0 + s)), 0.0)


def micro_batches(tree, steps: int, batch_sharding: jax.sharding.NamedSharding | None = None):
    """Splits every [B, ...] leaf into [steps, B / steps, ...].

    Micro-batch i takes the i-th 1/steps of each device's rows (not a contiguous slice of the
    global batch), so it stays split over the batch's devices and no row changes device.
    """

    def split(x: jax.Array) -> jax.Array:
        batch, rest = x.shape[0], x.shape[1:]
        shards = 1 if batch_sharding is None else batch // batch_sharding.shard_shape(x.shape)[0]
        x = x.reshape(shards, steps, batch // (shards * steps), *rest)  # [S, steps, m, ...]
        x = jnp.swapaxes(x, 0, 1).reshape(steps, batch // steps, *rest)  # [steps, S * m, ...]
        if batch_sharding is None:
            return x
        spec = jax.sharding.PartitionSpec(None, *batch_sharding.spec)
        return jax.lax.with_sharding_constraint(
            x, jax.sharding.NamedSharding(batch_sharding.mesh, spec)
        )

    return jax.tree.map(split, tree)


def accumulate_gradients(
    grad_fn, params, inputs, dropout_key: jax.Array, steps: int, batch_sharding
):
    """Mean gradients and metrics of `grad_fn(params, inputs, dropout_key)` over micro-batches.

    With steps > 1 one `lax.scan` runs the forward and backward pass of each micro-batch in turn
    (activations of one micro-batch live at a time), summing into accumulators shaped like the
    gradients (float32, as the params); micro-batch i gets dropout key fold_in(dropout_key, i).
    """
    if steps == 1:
        (_, aux), grads = grad_fn(params, inputs, dropout_key)
        return grads, aux
    micro = micro_batches(inputs, steps, batch_sharding)

    def body(total, xs):
        index, micro_inputs = xs
        (_, aux), grads = grad_fn(params, micro_inputs, jax.random.fold_in(dropout_key, index))
        return jax.tree.map(jnp.add, total, (grads, aux)), None

    first = jax.tree.map(lambda x: x[0], micro)
    (_, aux_shape), grads_shape = jax.eval_shape(lambda: grad_fn(params, first, dropout_key))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, aux_shape))
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(steps), micro))
    return jax.tree.map(lambda x: x / steps, total)


def diffusion_loss(
    params,
    inputs: dict,
    dropout_key: jax.Array,
    *,
    model: FunctionalModel,
    config: StepConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of a (micro-)batch `inputs` = {image, draws: (t, noise), cond}, and its metrics."""

    def model_fn(x_t, t):
        return model.apply(params, x_t, t, dropout_key=dropout_key, **inputs["cond"])

    with jax.named_scope("diffusion_loss"):
        return losses.diffusion_loss(
            model_fn, inputs["image"], inputs["draws"], config.precond, config.weighting
        )


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    frozen: FrozenInputs | None = None,
    *,
    model: FunctionalModel,
    schedule: NoiseSchedule | None,
    optimizer: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    config: StepConfig,
    batch_sharding: jax.sharding.NamedSharding | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the global batch; returns the new state and scalar metrics.

    `frozen.bank` holds the text embeddings that text-conditioned batches index by
    `caption_id`; `frozen.autoencoder` the params of a latent run's encoder (images are encoded
    here, a fresh posterior sample every step, before the noise is drawn).
    Noise levels, noise and condition dropout are drawn for the whole batch from the step key,
    so accumulating over micro-batches (`batch_sharding`: how the batch is split over devices)
    sees the same draws as one full-batch pass. Only the network runs in `model.dtype`: images,
    schedule, loss, gradients, optimizer state and EMA stay float32. A non-finite loss or
    gradient norm skips the update (only `step` moves on) and sets `metrics["nonfinite"]` to 1.
    """
    key = step_key(state)
    loss_key, dropout_key = jax.random.split(key)
    frozen = FrozenInputs() if frozen is None else frozen
    cond = conditioning.batch_conditions(
        config.conditioning,
        batch,
        frozen.bank,
        jax.random.fold_in(key, 2),
        config.cond_dropout,
        config.null_id,
    )
    images = batch["image"].astype(jnp.float32)  # [B, H, W, C]
    if config.autoencoder is not None:
        inputs = {"image": images}
        loss_fn = functools.partial(
            autoencoder_loss, config=config.autoencoder, kl_weight=config.kl_weight
        )
    else:
        if config.latent is not None:
            posterior_key = jax.random.fold_in(key, 3)
            images = config.latent.encode(frozen.autoencoder, images, posterior_key)
        draws = losses.draw_noise(loss_key, images, schedule, config.process, config.time_sampling)
        inputs = {"image": images, "draws": draws, "cond": cond}
        loss_fn = functools.partial(diffusion_loss, model=model, config=config)
    grads, aux = accumulate_gradients(
        jax.value_and_grad(loss_fn, has_aux=True),
        state.params,
        inputs,
        dropout_key,
        config.grad_accumulation_steps,
        batch_sharding,
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    ema_decay = ema_decay_at(state.step, config.ema_decay, config.ema_warmup)
    finite = jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)
    # A NaN / inf loss or gradient leaves params, EMA and optimizer state as they were; the step
    # still counts, so the data position and the RNG move on (the host applies the policy).
    params, ema_params, opt_state = keep_if(
        finite,
        (params, ema_update(state.ema_params, params, ema_decay), opt_state),
        (state.params, state.ema_params, state.opt_state),
    )
    new_state = state.replace(
        step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state
    )
    metrics = {
        **aux,
        "grad_norm": grad_norm,
        "param_norm": optax.tree.norm(params),
        "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
        "nonfinite": 1.0 - finite.astype(jnp.float32),  # 1.0: this step's update was skipped
        "ema_decay": jnp.asarray(ema_decay, jnp.float32),
    }
    return new_state, metrics


def keep_if(keep: jax.Array, new, old):
    """`new` where the scalar `keep` is true, else `old`, leaf by leaf (same structure)."""
    return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)


def jit_train_step(
    state_sharding,
    batch_sharding,
    metrics_sharding,
    *,
    sequence_parallel: bool = False,
    donate_state: bool = True,
    **static,
):
    """Compiles `train_step` once with explicit in/out shardings.

    The step is called as `step(state, batch, frozen)`; FrozenInputs (or None) is replicated.
    Activations follow `sharding.activation_rules(sequence_parallel)` on the batch's mesh. With
    `donate_state` the input state's buffers are donated (the new state reuses them, and the
    state passed in must not be used again); without it both states live until the old is freed.
    """
    mesh = batch_sharding.mesh

    def step(state, batch, frozen):
        # Entered while jit traces: the models' activation marks become sharding constraints.
        with sharding.activation_constraints(mesh, sequence_parallel):
            return train_step(state, batch, frozen, batch_sharding=batch_sharding, **static)

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        step,
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, metrics_sharding),
        donate_argnums=0 if donate_state else (),
    )
