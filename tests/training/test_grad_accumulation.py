"""training.grad_accumulation_steps: micro-batches scanned inside one step, gradients averaged."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import sharding
from configs import digits_ddpm
from models.functional import init_params
from training import experiment as experiment_lib
from training import loop
from training.train_state import create_train_state
from training.train_step import micro_batches

# Gradients and buffer sizes checked here do not depend on XLA's optimisation passes: skip them.
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _config(tiny_config, steps: int, batch_size: int = 32):
    config = tiny_config
    config.batch_size = batch_size
    config.model.dropout = 0.0  # dropout masks depend on the micro-batch shapes
    config.training.grad_accumulation_steps = steps
    return config


def _digits_batch(n: int) -> dict[str, np.ndarray]:
    digits = load_digits()
    images = (digits.images[:n] / 8.0 - 1.0).astype(np.float32)[..., None]
    return {"image": images, "label": digits.target[:n].astype(np.int32)}


def _sgd_step(config):
    """One step with SGD at lr 1 (new params = params - mean gradient) from perturbed params."""
    experiment = experiment_lib.build_experiment(config)
    experiment = dataclasses.replace(experiment, optimizer=optax.sgd(1.0))
    params = init_params(experiment.build_model, 0)
    rng = np.random.default_rng(0)  # fresh networks output 0: perturb every weight
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)
    state = create_train_state(params, experiment.optimizer, config.seed)
    shardings = loop.state_shardings(experiment, jax.eval_shape(lambda: state))
    step = loop.make_train_step(experiment, shardings)
    batch = sharding.host_batch_to_global(_digits_batch(config.batch_size), experiment.mesh)
    return step(jax.device_put(state, shardings), batch, None)


@pytest.mark.slow
@pytest.mark.parametrize(
    "process,conditioning",
    [("ddpm", "class"), ("flow", "none")],
)
def test_4_micro_batches_give_the_full_batch_update(tiny_config, process, conditioning):
    """Same noise levels, noise and condition dropout per example: equal up to float sums."""
    tiny_config.diffusion.process = process
    tiny_config.conditioning.kind = conditioning
    tiny_config.conditioning.dropout = 0.5
    if process == "flow":
        tiny_config.diffusion.prediction = "velocity"
        tiny_config.sampler.name = "euler"
    full, full_metrics = _sgd_step(_config(tiny_config.copy_and_resolve_references(), 1))
    accumulated, metrics = _sgd_step(_config(tiny_config, 4))  # 8 devices x 4 micro-batches of 1
    for name in ("loss", "grad_norm", "param_norm"):
        np.testing.assert_allclose(float(metrics[name]), float(full_metrics[name]), rtol=1e-5)
    assert float(metrics["grad_norm"]) > 0.1
    for a, b in zip(jax.tree.leaves(accumulated), jax.tree.leaves(full), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_micro_batch_i_takes_the_ith_part_of_every_devices_rows():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=2))
    batch_sharding = sharding.batch_sharding(mesh)
    rows = jax.device_put(jnp.arange(32), batch_sharding)  # 4 rows per device
    split = jax.jit(lambda x: micro_batches(x, 2, batch_sharding))(rows)
    np.testing.assert_array_equal(split[0], [r for r in range(32) if r % 4 < 2])
    np.testing.assert_array_equal(split[1], [r for r in range(32) if r % 4 >= 2])
    assert split.sharding.spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"))
    np.testing.assert_array_equal(micro_batches(jnp.arange(8), 4)[1], [2, 3])  # unsharded


@pytest.mark.slow
def test_accumulation_cuts_activation_memory_without_moving_rows(tiny_config):
    """Compiled only: temporaries shrink with 4 micro-batches, and no batch rows are gathered."""

    def compiled(steps: int):
        experiment = experiment_lib.build_experiment(_config(tiny_config, steps, batch_size=256))
        abstract = jax.eval_shape(
            lambda: create_train_state(
                init_params(experiment.build_model, 0), experiment.optimizer, 0
            )
        )
        step = loop.make_train_step(experiment, loop.state_shardings(experiment, abstract))
        batch_sharding = sharding.batch_sharding(experiment.mesh)
        batch = {
            "image": jax.ShapeDtypeStruct((256, 8, 8, 1), jnp.float32, sharding=batch_sharding),
            "label": jax.ShapeDtypeStruct((256,), jnp.int32, sharding=batch_sharding),
        }
        return step.lower(abstract, batch, None).compile()

    full, accumulated = compiled(1), compiled(4)
    full_bytes = full.memory_analysis().temp_size_in_bytes
    accumulated_bytes = accumulated.memory_analysis().temp_size_in_bytes
    assert accumulated_bytes < 0.5 * full_bytes, (accumulated_bytes, full_bytes)
    hlo = accumulated.as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo


def _expect_error_before_compiling(config, match, monkeypatch):
    def no_compiling(*args, **kwargs):
        raise AssertionError("jax.jit was called before the config was validated")

    monkeypatch.setattr(jax, "jit", no_compiling)
    with pytest.raises(ValueError, match=match):
        experiment_lib.build_experiment(config)


@pytest.mark.parametrize(
    "steps,batch_size,match",
    [
        (0, 64, r"training\.grad_accumulation_steps=0 must be >= 1"),
        (
            3,
            64,
            r"training\.grad_accumulation_steps=3 must divide the per-device batch: "
            r"batch_size=64 is not a multiple of 8 batch shards \(mesh data x fsdp\) x 3 "
            r"micro-batches = 24",
        ),
        (16, 64, r"training\.grad_accumulation_steps=16 must divide the per-device batch"),
    ],
)
def test_bad_accumulation_is_refused_before_compiling(monkeypatch, steps, batch_size, match):
    config = digits_ddpm.get_config()
    config.batch_size = batch_size
    config.training.grad_accumulation_steps = steps
    _expect_error_before_compiling(config, match, monkeypatch)
