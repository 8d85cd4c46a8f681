"""Fixtures shared by the model tests."""

import jax
import pytest


@pytest.fixture(scope="module")
def fast_compiles():
    """The numbers checked here do not depend on XLA's optimisation passes: skip them."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
