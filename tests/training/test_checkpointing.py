import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

import sharding
from training import checkpointing
from training.train_state import TrainState, create_train_state


def _state_and_shardings(mesh):
    params = {"dense": {"kernel": jnp.arange(32.0).reshape(4, 8)}, "bias": jnp.ones(8)}
    logical = {"dense": {"kernel": P("embed", "mlp")}, "bias": P("mlp")}
    opt = optax.adam(1e-3)
    state = create_train_state(params, opt, seed=3)
    param_sh = sharding.param_shardings(params, logical, mesh, sharding.rules_for(mesh))
    shardings = TrainState(
        step=sharding.replicated(mesh),
        params=param_sh,
        ema_params=param_sh,
        opt_state=sharding.shard_like_params(
            state.opt_state, param_sh, jax.tree.structure(params), mesh
        ),
        rng=sharding.replicated(mesh),
    )
    return jax.device_put(state, shardings), shardings


def test_save_then_restore_round_trips_with_shardings(tmp_path):
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    state, shardings = _state_and_shardings(mesh)
    state = state.replace(
        step=jnp.array(7, jnp.int32), ema_params=jax.tree.map(lambda x: x * 2, state.params)
    )
    manager = checkpointing.make_manager(str(tmp_path), max_to_keep=2)
    assert checkpointing.restore_latest(manager, state) is None
    checkpointing.save(manager, state, force=True)
    manager.wait_until_finished()

    fresh = checkpointing.make_manager(str(tmp_path), max_to_keep=2)
    abstract = checkpointing.abstract_like(jax.eval_shape(lambda: state), shardings)
    restored = checkpointing.restore_latest(fresh, abstract)
    assert isinstance(restored, TrainState) and int(restored.step) == 7
    assert restored.params["dense"]["kernel"].sharding.spec == P(None, "fsdp")
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert type(restored.opt_state[0]) is type(state.opt_state[0])


def test_keeps_only_the_newest_k(tmp_path):
    mesh = sharding.make_mesh(sharding.MeshConfig())
    state, _ = _state_and_shardings(mesh)
    manager = checkpointing.make_manager(str(tmp_path), max_to_keep=2)
    for step in (1, 2, 3):
        checkpointing.save(manager, state.replace(step=jnp.array(step, jnp.int32)), force=True)
    manager.wait_until_finished()
    assert list(manager.all_steps()) == [2, 3]
