"""model.dtype = "bfloat16": only the network computes in bf16; everything around it is float32.

Parameters, gradients, optimizer state and EMA stay float32; so do the noise schedule, the noisy
images the network reads, the loss, and the samplers' arithmetic. Near alpha-bar = 1 the schedule
in bf16 rounds alpha-bar to 1 and sigma to 0 (a known NaN source in diffusers' Flax SDXL).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

import sharding
from configs import digits_dit
from diffusion import losses, samplers, schedules
from models.functional import FunctionalModel
from training import loop
from training.experiment import build_experiment

# The dtypes and loss values checked here do not depend on XLA's optimisation passes: skip them.
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _digits_batch(n: int) -> dict[str, np.ndarray]:
    digits = load_digits()
    images = (digits.images[:n] / 8.0 - 1.0).astype(np.float32)[..., None]
    return {"image": images, "label": digits.target[:n].astype(np.int32)}


def _bf16_config(tiny_config, backbone: str):
    """The tiny digits U-Net, or a 2-block class-conditional DiT, computing in bf16."""
    if backbone == "dit":
        config = digits_dit.get_config()
        config.model.depth, config.model.hidden_size, config.model.num_heads = 2, 32, 2
        for field in ("batch_size", "optimizer", "sampler"):
            config[field] = tiny_config[field]
    else:
        config = tiny_config
        config.model.dropout = 0.0
    config.model.dtype = "bfloat16"
    return config


def _perturbed(params, scale: float = 0.05):
    """Zero-initialised output layers make a fresh network output 0; perturb every weight."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape).astype(p.dtype), params)


def _float_leaves(tree) -> list[jax.Array]:
    return [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]


@pytest.mark.slow
@pytest.mark.parametrize("backbone,accumulation", [("unet", 1), ("dit", 2)])
def test_bf16_step_keeps_params_optimizer_state_and_ema_float32(
    tiny_config, backbone, accumulation
):
    config = _bf16_config(tiny_config, backbone)
    config.training.grad_accumulation_steps = accumulation
    experiment = build_experiment(config)
    state, shardings = loop.create_state(experiment, seed=0)
    step = loop.make_train_step(experiment, shardings)
    batch = sharding.host_batch_to_global(_digits_batch(config.batch_size), experiment.mesh)
    # The network really computes in bf16 (convolutions / matmuls on bf16 operands) ...
    program = str(jax.make_jaxpr(step)(state, batch, None)).splitlines()
    products = [line for line in program if "conv_general_dilated" in line or "dot_general" in line]
    assert any(":bf16[" in line for line in products)
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, batch, None)
    # ... yet everything the optimizer touches stays float32.
    for tree in (state.params, state.ema_params, state.opt_state):
        leaves = _float_leaves(tree)
        assert leaves and {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}
    assert len(_float_leaves(state.opt_state)) >= 2 * len(jax.tree.leaves(state.params))  # mu, nu
    assert all(metric.dtype == jnp.float32 for metric in metrics.values())
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before), strict=True)
    ]
    assert any(moved)


@dataclasses.dataclass(frozen=True)
class _Bf16Spy:
    """Wraps a network: records what it is called with and returns its output in bf16."""

    model: FunctionalModel
    calls: list = dataclasses.field(default_factory=list)

    def apply(self, params, x_t, t, **kwargs):
        out = self.model.apply(params, x_t, t, **kwargs).astype(jnp.bfloat16)
        self.calls.append({"x_t_dtype": x_t.dtype})
        jax.debug.callback(
            lambda x, tt, o: self.calls[-1].update(
                x_t=np.asarray(x), t=np.asarray(tt), out=np.asarray(o)
            ),
            x_t,
            t,
            out.astype(jnp.float32),
        )
        return out


@pytest.mark.slow
def test_schedule_noisy_images_and_loss_stay_float32_around_a_bf16_network(tiny_config):
    """A schedule whose alpha-bars all round to 1 in bf16 (sigma 0: x_t = x0, no noise at all)."""
    experiment = build_experiment(_bf16_config(tiny_config, "unet"))
    schedule = schedules.make_schedule("linear", 10, 1e-5, 2e-5)  # alpha-bar 0.99999..0.99985
    assert float(jnp.asarray(schedule.alphas_cumprod, jnp.bfloat16).min()) == 1.0
    state, shardings = loop.create_state(experiment, seed=0)
    state = jax.device_put(state.replace(params=_perturbed(state.params)), shardings)
    spy = _Bf16Spy(experiment.model)
    experiment = dataclasses.replace(experiment, schedule=schedule, model=spy)
    step = loop.make_train_step(experiment, shardings)
    host = _digits_batch(16)
    _, metrics = step(state, sharding.host_batch_to_global(host, experiment.mesh), None)
    jax.effects_barrier()  # the callbacks have run

    (call,) = spy.calls
    assert call["x_t_dtype"] == jnp.float32
    # Recover eps from x_t = sqrt(alpha-bar) x0 + sqrt(1 - alpha-bar) eps in float64: with the
    # float32 schedule it is the N(0, 1) noise; with a bf16 one x_t = x0 and eps would be ~0.
    alpha_bar = np.asarray(schedule.alphas_cumprod, np.float64)[call["t"]][:, None, None, None]
    x0 = host["image"].astype(np.float64)
    eps = (call["x_t"] - np.sqrt(alpha_bar) * x0) / np.sqrt(1.0 - alpha_bar)
    assert 0.9 < eps.std() < 1.1 and abs(eps.mean()) < 0.1, (eps.std(), eps.mean())
    # The loss: a float32 MSE of the bf16 output (cast up) against the float32 target eps.
    assert metrics["loss"].dtype == jnp.float32
    expected = np.mean((call["out"].astype(np.float64) - eps) ** 2)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-4)


def test_samplers_keep_float32_arithmetic_for_a_bf16_network():
    """D(x, sigma) = x - sigma * eps for a constant eps: lost in bf16 at sigma = 0.01."""
    eps = 0.5

    def bf16_model(x_t, t):
        return jnp.full(x_t.shape, eps, jnp.bfloat16)

    denoise = samplers.make_denoiser(bf16_model, "eps")
    x = jnp.linspace(-1.0, 1.0, 32, dtype=jnp.float32).reshape(2, 4, 4, 1)
    x0 = denoise(x, jnp.float32(0.01), jnp.float32(3.0))
    assert x0.dtype == jnp.float32
    np.testing.assert_allclose(x0, x - 0.01 * eps, atol=1e-6)

    schedule = schedules.make_schedule("linear", 1000)
    out = samplers.sample(
        bf16_model,
        schedule,
        jax.random.normal(jax.random.key(0), (2, 4, 4, 1)),
        jax.random.key(1),
        sampler="dpmpp_2m",
        num_steps=10,
        spacing="karras",
    )
    assert out.samples.dtype == jnp.float32 and np.isfinite(np.asarray(out.samples)).all()


def _eval_loss(experiment, params, images) -> float:
    """Loss at fixed noise and timesteps, without dropout: comparable across steps (jitted)."""

    @jax.jit
    def loss_at(params, images, key):
        model_fn = lambda x, t: experiment.model.apply(params, x, t)  # noqa: E731
        draws = losses.draw_noise(key, images, experiment.schedule)
        return losses.diffusion_loss(model_fn, images, draws)[0]

    return sum(float(loss_at(params, jnp.asarray(images), jax.random.key(s))) for s in range(4)) / 4


@pytest.mark.slow
def test_bf16_training_lowers_the_loss_on_a_fixed_batch(tiny_config):
    tiny_config.optimizer.learning_rate = 2e-3
    experiment = build_experiment(_bf16_config(tiny_config, "unet"))
    state, shardings = loop.create_state(experiment, seed=0)
    step = loop.make_train_step(experiment, shardings)
    host = _digits_batch(16)
    before = _eval_loss(experiment, state.params, host["image"])
    for _ in range(30):
        state, metrics = step(state, sharding.host_batch_to_global(host, experiment.mesh), None)
    after = _eval_loss(experiment, state.params, host["image"])
    assert np.isfinite(float(metrics["loss"]))
    assert after < 0.7 * before, (before, after)
