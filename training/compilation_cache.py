"""The persistent XLA compilation cache (`compilation_cache_dir`), shared by runs and benchmarks."""

from __future__ import annotations

import jax

import paths
from errors import ConfigError


def enable_compilation_cache(directory: str) -> int | None:
    """Caches every compiled program in `directory` (JAX's persistent compilation cache).

    Call it before the first compile: JAX decides once per process whether the cache is used.
    No minimum compile time or entry size, so the small programs of a run (init, sampling) are
    cached as well as the train step. "" leaves JAX's settings alone. A remote directory
    ("gs://bucket/cache") is read and written by JAX through etils' epath, as the workdir is.

    Returns:
      The number of entries already in `directory` (a restart finds the earlier run's), or None
      when `directory` is "".
    """
    if not isinstance(directory, str):  # callers outside a RunConfig (benchmarks) included
        raise ConfigError(
            f"compilation_cache_dir={directory!r} ({type(directory).__name__}) has the wrong "
            'type; expected str (a directory, or "" for no cache).'
        )
    if not directory:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cache = paths.as_path(directory)
    return len(list(cache.iterdir())) if cache.is_dir() else 0
