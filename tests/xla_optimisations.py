"""XLA's optimisation passes off for a block: compiles take a fraction of the time, and what a
test checks (shapes, shardings, memory, numbers compared between two programs compiled the same
way) does not depend on them."""

import contextlib
from collections.abc import Iterator

import jax


@contextlib.contextmanager
def optimisations_off() -> Iterator[None]:
    """Sets jax_disable_most_optimizations for the block and restores it after."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
