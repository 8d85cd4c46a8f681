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
# (fn, one AxisNames per argument, the output's AxisNames) -> fn run on each device's blocks.
PerDevice = Callable[[Callable[..., jax.Array], tuple[AxisNames, ...], AxisNames], Callable]

_resolver: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar(
    "activation_resolver", default=None
)
_split_counts: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "activation_split_counts", default=None
)
_per_device: contextvars.ContextVar[PerDevice | None] = contextvars.ContextVar(
    "activation_per_device", default=None
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


def per_device(
    fn: Callable[..., jax.Array], in_names: tuple[AxisNames, ...], out_names: AxisNames
) -> Callable[..., jax.Array]:
    """`fn` applied to each device's block of its array arguments (their axes named by
    `in_names`, one tuple per argument; the output's by `out_names`), for kernels XLA cannot
    partition (Pallas). Axes the caller's mesh splits are split; every other axis arrives whole.
    `fn` itself outside `resolving`."""
    mapper = _per_device.get()
    return fn if mapper is None else mapper(fn, in_names, out_names)


@contextlib.contextmanager
def resolving(
    resolver: Resolver,
    split_counts: dict[str, int] | None = None,
    per_device_map: PerDevice | None = None,
) -> Iterator[None]:
    """Within the block, `constrain(x, names)` returns `resolver(x, names)`, `split_count`
    reads `split_counts` and `per_device` uses `per_device_map` (set while tracing)."""
    token = _resolver.set(resolver)
    counts_token = _split_counts.set(dict(split_counts or {}))
    per_device_token = _per_device.set(per_device_map)
    try:
        yield
    finally:
        _per_device.reset(per_device_token)
        _split_counts.reset(counts_token)
        _resolver.reset(token)
