import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import sharding


def test_mesh_fills_minus_one_and_multiplies_to_device_count():
    sizes = sharding.MeshConfig(data=-1, fsdp=2).axis_sizes(8)
    assert sizes == {"data": 4, "fsdp": 2, "tensor": 1}
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=2))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert sharding.num_batch_shards(mesh) == 8
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.num_batch_shards(mesh) == 4  # tensor shards share their batch slice


@pytest.mark.parametrize(
    "data,fsdp,match",
    [
        (3, -1, "does not divide"),
        (2, 2, "multiply to 4"),
        (0, 1, r"mesh\.data=0"),
        (-1, -1, "at most one"),
    ],
)
def test_bad_mesh_sizes_are_explained(data, fsdp, match):
    with pytest.raises(ValueError, match=match):
        sharding.MeshConfig(data=data, fsdp=fsdp).axis_sizes(8)


def test_logical_rules_shard_the_first_divisible_named_dim():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    rules = sharding.rules_for(mesh)
    conv = P(None, None, "conv_in", "conv_out")
    assert sharding.logical_to_mesh_spec(conv, (3, 3, 64, 128), mesh, rules) == P(
        None, None, None, "fsdp"
    )
    # conv_out=3 is not divisible by 4: fall through to conv_in.
    assert sharding.logical_to_mesh_spec(conv, (3, 3, 128, 3), mesh, rules) == P(
        None, None, "fsdp", None
    )
    assert sharding.logical_to_mesh_spec(P("norm"), (128,), mesh, rules) == P(None)
    assert sharding.logical_to_mesh_spec(None, (7,), mesh, rules) == P()


def test_no_rules_without_fsdp_axis_means_replicated():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=1))
    assert sharding.rules_for(mesh) == ()
    spec = sharding.logical_to_mesh_spec(
        P("embed", "mlp"), (64, 64), mesh, sharding.rules_for(mesh)
    )
    assert spec == P()


def test_optimizer_state_follows_param_shardings():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    params = {"w": jnp.zeros((8, 16)), "b": jnp.zeros((16,))}
    logical = {"w": P("embed", "mlp"), "b": P("mlp")}
    param_sh = sharding.param_shardings(params, logical, mesh, sharding.rules_for(mesh))
    assert param_sh["w"].spec == P(None, "fsdp") and param_sh["b"].spec == P("fsdp")
    opt_state = optax.adam(1e-3).init(params)
    opt_sh = sharding.shard_like_params(opt_state, param_sh, jax.tree.structure(params), mesh)
    assert opt_sh[0].mu["w"].spec == P(None, "fsdp")
    assert opt_sh[0].count.spec == P()


def test_host_batch_becomes_global_array_sharded_on_batch_axes():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=2))
    host = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    batch = sharding.host_batch_to_global(host, mesh)
    assert batch["image"].sharding.spec == P(("data", "fsdp"))
    assert len(batch["image"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(batch["image"]), host["image"])


def test_tensor_rules_split_columns_then_rows_and_fsdp_takes_the_other_dim():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    rules = sharding.rules_for(mesh)
    # q/k/v and MLP-in: output (column) dim over tensor, input dim over fsdp.
    assert sharding.logical_to_mesh_spec(P("embed", "heads"), (64, 64), mesh, rules) == P(
        "fsdp", "tensor"
    )
    assert sharding.logical_to_mesh_spec(P("embed", "mlp"), (64, 256), mesh, rules) == P(
        "fsdp", "tensor"
    )
    # attention-out and MLP-out: input (row) dim over tensor.
    assert sharding.logical_to_mesh_spec(P("heads", "embed"), (64, 64), mesh, rules) == P(
        "tensor", "fsdp"
    )
    assert sharding.logical_to_mesh_spec(P("mlp", "embed"), (256, 64), mesh, rules) == P(
        "tensor", "fsdp"
    )
    only_tensor = sharding.make_mesh(sharding.MeshConfig(data=-1, tensor=2))
    assert sharding.rules_for(only_tensor) == sharding.TENSOR_RULES


def test_rules_from_config_replace_the_defaults_and_bad_ones_are_named():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    rules = sharding.rules_for(mesh, "mlp=tensor, embed=fsdp")
    assert rules == (("mlp", "tensor"), ("embed", "fsdp"))
    # 'heads' is no longer mapped: attention kernels shard only their embed dim.
    assert sharding.logical_to_mesh_spec(P("embed", "heads"), (64, 64), mesh, rules) == P(
        "fsdp", None
    )
    data_only = sharding.make_mesh(sharding.MeshConfig(data=-1))
    assert sharding.rules_for(data_only, "mlp=tensor") == ()  # axes of size 1 are dropped
    with pytest.raises(ValueError, match=r"mesh\.rules='mlp=model'.*data, fsdp, tensor"):
        sharding.parse_rules("mlp=model")
