"""Functional view of an NNX network: split once, then apply as a pure function of params."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class FunctionalModel:
    """A network's static graph plus the shapes of its parameters and RNG state.

    Parameters travel as plain nested dicts (what Orbax saves and optax updates); the dropout RNG
    state is rebuilt inside each call from an explicit key, so the train step stays a pure
    function of (params, batch, key).
    """

    graphdef: nnx.GraphDef
    abstract_params: Params  # ShapeDtypeStructs, same tree as the params
    logical_specs: Params  # logical PartitionSpec per parameter (None where unannotated)
    abstract_rest: nnx.State  # non-parameter state (dropout RNG streams), shapes only

    def apply(
        self,
        params: Params,
        *args: Any,
        dropout_key: jax.Array | None = None,
        **kwargs: Any,
    ) -> jax.Array:
        """Runs the network; dropout is active only when `dropout_key` is given."""
        rest = jax.tree.map(lambda leaf: _fill_rng_leaf(leaf, dropout_key), self.abstract_rest)
        model = nnx.merge(self.graphdef, nnx.State(params), rest)
        if dropout_key is None:
            model.eval()
        else:
            model.train()
            nnx.reseed(model, dropout=dropout_key)
        return model(*args, **kwargs)


def _fill_rng_leaf(leaf: jax.ShapeDtypeStruct, key: jax.Array | None) -> jax.Array:
    """A concrete placeholder for one RNG-state leaf (reseeded right after when training)."""
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key(0) if key is None else key
    return jnp.zeros(leaf.shape, leaf.dtype)


def functionalize(build: Callable[[nnx.Rngs], nnx.Module]) -> FunctionalModel:
    """Splits the network made by `build(rngs)` without allocating its parameters."""
    abstract_model = nnx.eval_shape(lambda: build(nnx.Rngs(params=0, dropout=0)))
    graphdef, params, rest = nnx.split(abstract_model, nnx.Param, ...)
    abstract_params = nnx.to_pure_dict(params)
    logical_specs = nnx.to_pure_dict(nnx.get_partition_spec(params))
    logical_specs = jax.tree.map(
        lambda spec: spec if spec else None, logical_specs, is_leaf=_is_spec
    )
    return FunctionalModel(graphdef, abstract_params, logical_specs, rest)


def init_params(build: Callable[[nnx.Rngs], nnx.Module], seed: int | jax.Array) -> Params:
    """Initialises the parameters as a plain dict (jit with out_shardings to shard them)."""
    model = build(nnx.Rngs(params=seed, dropout=0))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def count_params(params: Params) -> int:
    """Total number of parameter entries (works on arrays and ShapeDtypeStructs)."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


def flatten(tree: Params) -> dict[tuple, Any]:
    """{path tuple: leaf} of a nested params dict."""
    return {
        tuple(key.key for key in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def unflatten(flat: dict[tuple, Any]) -> Params:
    """The nested params dict of {path tuple: leaf} (inverse of `flatten`)."""
    tree: Params = {}
    for path, leaf in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return tree


def _is_spec(x: Any) -> bool:
    return isinstance(x, jax.sharding.PartitionSpec) or x is None
