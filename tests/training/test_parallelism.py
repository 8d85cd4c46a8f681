"""Data, FSDP and tensor parallelism on 8 simulated devices: same numbers, sharded memory."""

import jax
import numpy as np
import pytest

import sharding
from configs import digits_ddpm, digits_dit
from training import loop
from training.experiment import build_experiment

# Shardings, memory per device, and numbers compared between programs compiled the same way do not
# depend on XLA's optimisation passes: skip them (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _steps(config, num_steps=2):
    experiment = build_experiment(config)
    state, shardings = loop.create_state(experiment, seed=0)
    step = loop.make_train_step(experiment, shardings)
    images = np.random.default_rng(0).uniform(-1, 1, (config.batch_size, 8, 8, 1))
    host = {
        "image": images.astype(np.float32),
        "label": np.arange(config.batch_size, dtype=np.int32) % 10,
        "caption_id": np.zeros(config.batch_size, np.int32),
    }
    for _ in range(num_steps):
        batch = sharding.host_batch_to_global(host, experiment.mesh)
        state, metrics = step(state, batch, experiment.frozen)
    return state, float(metrics["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("module", [digits_ddpm, digits_dit])
def test_data_fsdp_tensor_mesh_matches_pure_data_parallel(module, tiny_config):
    config = module.get_config()
    if module is digits_ddpm:
        config.model = tiny_config.model
    else:
        config.model.depth, config.model.hidden_size = 2, 64
    config.batch_size = 16
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 8, 1, 1
    data_state, data_loss = _steps(config)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    mixed_state, mixed_loss = _steps(config)
    specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(mixed_state.params)}
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs
    np.testing.assert_allclose(mixed_loss, data_loss, rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(mixed_state.params), jax.tree.leaves(data_state.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("module", [digits_ddpm, digits_dit])
def test_fsdp8_keeps_an_eighth_of_params_and_optimizer_state_per_device(module):
    config = module.get_config()
    config.mesh.data, config.mesh.fsdp = 1, 8
    experiment = build_experiment(config)
    state, _ = loop.create_state(experiment, seed=0)
    trees = (state.params, state.ema_params, state.opt_state)
    total = sum(leaf.nbytes for tree in trees for leaf in jax.tree.leaves(tree))
    device = jax.devices()[0]
    on_device = sum(
        shard.data.nbytes
        for tree in trees
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )
    assert on_device <= total / 8 * 1.05, (on_device, total)


@pytest.mark.slow
def test_sequence_parallel_splits_the_saved_residual_stream_by_tokens_and_keeps_the_loss():
    config = digits_dit.get_config()
    config.model.depth, config.model.hidden_size, config.model.num_heads = 2, 64, 4
    config.model.patch_size, config.model.use_scan, config.model.remat = 2, True, True
    config.batch_size = 16
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 8, 1, 1
    _, data_loss = _steps(config, num_steps=1)
    config.mesh.data, config.mesh.tensor, config.mesh.sequence_parallel = 2, 4, True
    _, sequence_loss = _steps(config, num_steps=1)
    np.testing.assert_allclose(sequence_loss, data_loss, rtol=1e-5)

    # With remat each scanned block keeps only its input for the backward pass: under sequence
    # parallelism that stack is [depth, batch / data, tokens / tensor, hidden] on each device.
    experiment = build_experiment(config)
    state, shardings = loop.abstract_state(experiment)
    step = loop.make_train_step(experiment, shardings)
    batch_sharding = sharding.batch_sharding(experiment.mesh)
    batch = {
        "image": jax.ShapeDtypeStruct((16, 8, 8, 1), np.float32, sharding=batch_sharding),
        "label": jax.ShapeDtypeStruct((16,), np.int32, sharding=batch_sharding),
        "caption_id": jax.ShapeDtypeStruct((16,), np.int32, sharding=batch_sharding),
    }
    hlo = step.lower(state, batch, None).compile().as_text()
    tokens = (8 // 2) ** 2
    assert f"f32[2,8,{tokens // 4},64]" in hlo
    assert f"f32[2,8,{tokens},64]" not in hlo
