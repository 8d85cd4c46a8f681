import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import sharding
from diffusion import losses
from tests.xla_optimisations import optimisations_off
from training import loop, train_step
from training.experiment import build_experiment


def _digits_batch(n: int) -> dict[str, np.ndarray]:
    digits = load_digits()
    images = (digits.images[:n] / 8.0 - 1.0).astype(np.float32)[..., None]
    return {"image": images, "label": digits.target[:n].astype(np.int32)}


def _eval_loss(experiment, params, images) -> float:
    """Loss at fixed noise and timesteps, without dropout: comparable across steps (jitted)."""

    @jax.jit
    def loss_at(params, images, key):
        model_fn = lambda x, t: experiment.model.apply(params, x, t)  # noqa: E731
        draws = losses.draw_noise(key, images, experiment.schedule)
        return losses.diffusion_loss(model_fn, images, draws)[0]

    return sum(float(loss_at(params, jnp.asarray(images), jax.random.key(s))) for s in range(4)) / 4


@pytest.mark.slow
def test_train_step_lowers_the_loss_on_a_fixed_batch(tiny_config):
    tiny_config.optimizer.learning_rate = 2e-3
    experiment = build_experiment(tiny_config)
    state, shardings = loop.create_state(experiment, seed=0)
    step = loop.make_train_step(experiment, shardings)
    host = _digits_batch(16)
    before = _eval_loss(experiment, state.params, host["image"])
    for _ in range(40):
        batch = sharding.host_batch_to_global(host, experiment.mesh)
        state, metrics = step(state, batch, experiment.frozen)
    after = _eval_loss(experiment, state.params, host["image"])
    assert int(state.step) == 40
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    assert after < 0.6 * before, (before, after)
    # EMA trails the parameters.
    ema_gap = jax.tree.leaves(
        jax.tree.map(lambda a, b: jnp.abs(a - b).max(), state.params, state.ema_params)
    )
    assert max(float(g) for g in ema_gap) > 0


def _two_steps(config, devices):
    experiment = build_experiment(config, devices)
    state, shardings = loop.create_state(experiment, seed=0)
    step = loop.make_train_step(experiment, shardings)
    host = _digits_batch(config.batch_size)
    for _ in range(2):
        batch = sharding.host_batch_to_global(host, experiment.mesh)
        state, metrics = step(state, batch, experiment.frozen)
    return state, metrics


@pytest.mark.slow
def test_sharded_step_on_8_devices_equals_one_device(tiny_config):
    with optimisations_off():  # both programs compiled the same way: the numbers still compare
        tiny_config.mesh.data, tiny_config.mesh.fsdp = 4, 2
        sharded, sharded_metrics = _two_steps(tiny_config, jax.devices())
        tiny_config.mesh.data, tiny_config.mesh.fsdp = 1, 1
        single, single_metrics = _two_steps(tiny_config, jax.devices()[:1])
    specs = {leaf.sharding.spec for leaf in jax.tree.leaves(sharded.params)}
    assert any("fsdp" in str(spec) for spec in specs), specs  # FSDP really shards something
    np.testing.assert_allclose(
        float(sharded_metrics["loss"]), float(single_metrics["loss"]), rtol=1e-5
    )
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params), strict=True):
        # Adam divides by sqrt(v): near-zero gradients amplify reduction-order noise, so compare
        # at 1% of one step's size (lr = 1e-3) rather than bitwise.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@contextlib.contextmanager
def _smallest_step(config):
    """(experiment, state, step) of `config` (smallest_config), compiled with XLA's
    optimisations off (fast to build; for tests that compare nothing numerically close)."""
    with optimisations_off():
        experiment = build_experiment(config)
        state, shardings = loop.create_state(experiment, seed=0)
        yield experiment, state, loop.make_train_step(experiment, shardings)


def test_nonfinite_batch_skips_the_update_but_advances_the_step(smallest_config):
    with _smallest_step(smallest_config) as (experiment, state, step):
        host = _digits_batch(smallest_config.batch_size)
        before = jax.device_get(state)  # host copies: the step donates the state's buffers
        state, metrics = step(
            state, sharding.host_batch_to_global(host, experiment.mesh), experiment.frozen
        )
        finite = jax.device_get(state)
        assert float(metrics["nonfinite"]) == 0.0 and int(finite.step) == 1
        changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), finite.params, before.params)
        assert any(jax.tree.leaves(changed))  # (only conv_out at first: it starts at zero)

        host["image"][3, 2, 2, 0] = np.nan  # one NaN pixel poisons the loss and every gradient
        state, metrics = step(
            state, sharding.host_batch_to_global(host, experiment.mesh), experiment.frozen
        )
    skipped = jax.device_get(state)
    assert float(metrics["nonfinite"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    assert int(skipped.step) == 2  # the data position and the step's RNG still move on
    for field in ("params", "ema_params", "opt_state", "rng"):
        for a, b in zip(
            jax.tree.leaves(getattr(skipped, field)),
            jax.tree.leaves(getattr(finite, field)),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b, err_msg=field)


@pytest.mark.slow
@pytest.mark.parametrize("donate", [True, False], ids=["donated", "kept"])
def test_donate_state_frees_or_keeps_the_input_state(smallest_config, donate):
    """training.donate_state: the step reuses the input state's buffers, or leaves them alive."""
    smallest_config.training.donate_state = donate
    with _smallest_step(smallest_config) as (experiment, state, step):
        batch = sharding.host_batch_to_global(_digits_batch(16), experiment.mesh)
        new_state, _ = step(state, batch, experiment.frozen)
        jax.block_until_ready(new_state)
    deleted = [leaf.is_deleted() for leaf in jax.tree.leaves(state)]
    assert int(new_state.step) == 1
    if donate:
        assert all(deleted)
    else:
        assert not any(deleted)
        assert int(state.step) == 0  # the old state is still readable
        jax.tree.map(np.asarray, state)


def test_ema_warmup_decay_is_the_formula_and_diffusers_own():
    """min(decay, (1 + s) / (10 + s)), 0 at s = 0: diffusers' EMAModel.get_decay at its
    optimization_step s + 1 (its count includes the update being made; ours is state.step)."""
    import torch  # noqa: PLC0415
    from diffusers.training_utils import EMAModel  # noqa: PLC0415

    steps = np.array([0, 1, 2, 9, 90, 1_000, 89_000, 91_000, 10**6])
    for decay in (0.9999, 0.995, 0.0):
        reference = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=decay)
        warm = jax.jit(lambda s, d=decay: train_step.ema_decay_at(s, d, warmup=True))
        got = np.array([float(warm(jnp.int32(s))) for s in steps])
        formula = np.where(steps > 0, np.minimum(decay, (1 + steps) / (10 + steps)), 0.0)
        np.testing.assert_allclose(got, formula, rtol=1e-6)
        np.testing.assert_allclose(got, [reference.get_decay(s + 1) for s in steps], rtol=1e-6)
        assert train_step.ema_decay_at(jnp.int32(5), decay, warmup=False) == decay


def _run(step, state, experiment, batches):
    """Steps through host `batches`; the final state and each step's EMA decay."""
    metrics = []
    for host in batches:
        batch = sharding.host_batch_to_global(host, experiment.mesh)
        state, m = step(state, batch, experiment.frozen)
        metrics.append(float(m["ema_decay"]))
    return state, metrics


def _distance(a, b) -> float:
    """Global L2 norm of the difference of two param trees."""
    return float(optax.tree.norm(jax.tree.map(jnp.subtract, a, b)))


def test_ema_warmup_tracks_the_params_and_resumes_bit_exact(smallest_config):
    """Six steps with warm-up leave the EMA near the params (decays 0, 2/11, ..., 6/15), without
    it (0.995 from step 0) near the init; the decay is read from the state's step inside one
    compiled step, so a restart (a freshly jitted step) at step 3 continues bit-exactly."""
    digits = _digits_batch(64)
    batches = [{k: v[8 * i : 8 * i + 16] for k, v in digits.items()} for i in range(6)]
    smallest_config.optimizer.learning_rate = 1e-3
    smallest_config.optimizer.ema_warmup = True
    with _smallest_step(smallest_config) as (experiment, state, step):
        init = jax.device_get(state.params)
        fresh, shardings = loop.create_state(experiment, seed=0)
        whole, decays = _run(step, state, experiment, batches)
        assert step._cache_size() == 1  # one compile for every step value
        half, _ = _run(step, fresh, experiment, batches[:3])
        half = jax.device_put(jax.device_get(half), shardings)  # as a restore puts it back
        restarted = loop.make_train_step(experiment, shardings)
        resumed, _ = _run(restarted, half, experiment, batches[3:])
    np.testing.assert_allclose(decays, [0, 2 / 11, 3 / 12, 4 / 13, 5 / 14, 6 / 15], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _distance(whole.ema_params, whole.params) < 0.5 * _distance(whole.params, init)

    smallest_config.optimizer.ema_warmup = False
    with _smallest_step(smallest_config) as (experiment, state, step):
        plain, decays = _run(step, state, experiment, batches)
    np.testing.assert_allclose(decays, [0.995] * 6, rtol=1e-6)
    assert _distance(plain.ema_params, init) < 0.05 * _distance(plain.params, init)
