import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from models import functional


class _Toy(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        init = nnx.with_partitioning(
            nnx.initializers.lecun_normal(), ("embed", "mlp"), eager_sharding=False
        )
        self.dense = nnx.Linear(4, 8, kernel_init=init, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.dropout(self.dense(x))


def test_functionalize_allocates_nothing_and_reports_logical_specs():
    model = functional.functionalize(_Toy)
    assert isinstance(model.abstract_params["dense"]["kernel"], jax.ShapeDtypeStruct)
    assert model.logical_specs["dense"]["kernel"] == P("embed", "mlp")
    assert model.logical_specs["dense"]["bias"] is None
    assert functional.count_params(model.abstract_params) == 4 * 8 + 8


def test_apply_matches_the_stateful_module_and_dropout_needs_a_key():
    model = functional.functionalize(_Toy)
    params = functional.init_params(_Toy, seed=0)
    x = jnp.ones((3, 4))
    expected = x @ params["dense"]["kernel"] + params["dense"]["bias"]
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-6)
    a = model.apply(params, x, dropout_key=jax.random.key(1))
    b = model.apply(params, x, dropout_key=jax.random.key(2))
    assert not np.allclose(a, b)
    assert set(np.unique(np.asarray(a) == 0)) == {True, False}  # some units dropped, not all
    np.testing.assert_array_equal(a, model.apply(params, x, dropout_key=jax.random.key(1)))


def test_apply_is_jittable_and_differentiable():
    model = functional.functionalize(_Toy)
    params = functional.init_params(_Toy, seed=0)

    @jax.jit
    def loss(params, key):
        return jnp.sum(model.apply(params, jnp.ones((2, 4)), dropout_key=key) ** 2)

    grads = jax.grad(loss)(params, jax.random.key(0))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert float(jnp.abs(grads["dense"]["kernel"]).sum()) > 0
