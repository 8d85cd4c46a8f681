"""Logical names for activation axes: models mark where an activation's layout matters, and the
caller (the train step, the sampler) decides what the names mean on its mesh.

Outside `resolving(...)` the marks are identities, so a network runs unchanged in a notebook or a
test; inside, `sharding.activation_constraints` turns them into sharding constraints.

Names used by the networks:
  batch   the example axis
  length  the token axis of a transformer's residual stream (split in sequence parallelism)
  embed   the residual stream's channels
  heads   attention heads (q, k, v and the attended values, per head)
  mlp     the hidden units of a feed-forward layer
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import jax

AxisNames = tuple[str | None, ...]
Resolver = Callable[[jax.Array, AxisNames], jax.Array]

_resolver: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar(
    "activation_resolver", default=None
)


def constrain(x: jax.Array, names: AxisNames) -> jax.Array:
    """Marks `x`'s axes with logical names (one per dimension, None = no preference)."""
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} axis names {names} for a {x.ndim}-d array.")
    resolver = _resolver.get()
    return x if resolver is None else resolver(x, names)


@contextlib.contextmanager
def resolving(resolver: Resolver) -> Iterator[None]:
    """Within the block, `constrain(x, names)` returns `resolver(x, names)` (set while tracing)."""
    token = _resolver.set(resolver)
    try:
        yield
    finally:
        _resolver.reset(token)
