"""enable_compilation_cache: JAX's persistent cache settings from `compilation_cache_dir`."""

import jax
import pytest

from errors import ConfigError
from training import compilation_cache

OPTIONS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@pytest.fixture
def restore_options():
    """Puts JAX's cache options back (the session's own cache, tests/conftest.py)."""
    previous = {name: getattr(jax.config, name) for name in OPTIONS}
    yield previous
    for name, value in previous.items():
        jax.config.update(name, value)


def test_a_directory_caches_every_program(tmp_path, restore_options):
    directory = tmp_path / "jax_cache"
    assert compilation_cache.enable_compilation_cache(str(directory)) == 0  # not there yet
    assert jax.config.jax_compilation_cache_dir == str(directory)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == 0
    directory.mkdir()
    (directory / "entry").write_bytes(b"")
    assert compilation_cache.enable_compilation_cache(str(directory)) == 1  # a restart's view


def test_empty_leaves_jax_alone_and_other_types_are_refused(restore_options):
    assert compilation_cache.enable_compilation_cache("") is None
    assert {name: getattr(jax.config, name) for name in OPTIONS} == restore_options
    with pytest.raises(ConfigError, match=r"compilation_cache_dir=3 \(int\) has the wrong type"):
        compilation_cache.enable_compilation_cache(3)
