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
_split_counts: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "activation_split_counts", default=None
)


def constrain(x: jax.Array, names: AxisNames) -> jax.Array:
    """Marks `x`'s axes with logical names (one per dimension, None = no preference)."""
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} axis names {names} for a {x.ndim}-d array.")
    resolver = _resolver.get()
    return x if resolver is None else resolver(x, names)


def split_count(name: str, size: int) -> int:
    """How many ways the caller's mesh splits a `size`-long axis called `name` (1 outside
    `resolving`, or where the split does not divide `size`): for code that blocks its work
    per device, such as a scan over the batch."""
    count = (_split_counts.get() or {}).get(name, 1)
    return count if size % count == 0 else 1


@contextlib.contextmanager
def resolving(resolver: Resolver, split_counts: dict[str, int] | None = None) -> Iterator[None]:
    """Within the block, `constrain(x, names)` returns `resolver(x, names)` and `split_count`
    reads `split_counts` (set while tracing)."""
    token = _resolver.set(resolver)
    counts_token = _split_counts.set(dict(split_counts or {}))
    try:
        yield
    finally:
        _split_counts.reset(counts_token)
        _resolver.reset(token)
