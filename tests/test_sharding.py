import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import sharding
from models import logical


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


def test_activation_spec_splits_named_divisible_dims_and_leaves_the_rest_to_xla():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=1, tensor=4))
    unconstrained = P.UNCONSTRAINED
    plain = sharding.activation_rules(sequence_parallel=False)
    sequence = sharding.activation_rules(sequence_parallel=True)
    names = ("batch", "length", "embed")
    assert sharding.activation_spec((8, 16, 32), names, mesh, plain) == P(
        "data", unconstrained, unconstrained
    )
    assert sharding.activation_spec((8, 16, 32), names, mesh, sequence) == P(
        "data", "tensor", unconstrained
    )
    # 6 tokens do not split 4 ways; an odd batch does not split 2 ways: XLA decides.
    assert sharding.activation_spec((3, 6, 32), names, mesh, sequence) == P(
        unconstrained, unconstrained, unconstrained
    )
    heads = ("batch", None, "heads", None)
    assert sharding.activation_spec((8, 16, 12, 8), heads, mesh, plain) == P(
        "data", unconstrained, "tensor", unconstrained
    )


def test_models_activation_marks_are_identities_outside_the_context_and_constraints_inside():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=1, tensor=4))
    x = jnp.ones((8, 16, 32))
    assert logical.constrain(x, ("batch", "length", "embed")) is x
    with pytest.raises(ValueError, match="3 axis names"):
        logical.constrain(jnp.ones((8, 16)), ("batch", "length", "embed"))

    def marked(x):
        with sharding.activation_constraints(mesh, sequence_parallel=True):
            return logical.constrain(x * 2, ("batch", "length", "embed")) + 1

    text = jax.jit(marked).lower(x).as_text()
    assert "sharding_constraint" in text and '[{"data"}, {"tensor"}, {?}]' in text
    np.testing.assert_array_equal(np.asarray(jax.jit(marked)(x)), np.full((8, 16, 32), 3.0))
