"""Test setup: 8 simulated CPU devices, so every sharded path runs in tests."""

import os
import tempfile

from tests.xla_flags import cpu_devices

# Must happen before JAX initialises its backends (subprocesses inherit the flags).
os.environ.setdefault("XLA_FLAGS", cpu_devices(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# JAX's persistent compilation cache, shared by the xdist workers and their subprocesses: many
# tests compile the same small programs (the tiny U-Net's step, init, sampling), and a hit skips
# XLA (test_latent.py: 429 s -> 309 s from a cold cache). Entries are keyed by program, flags and
# versions, so a stale one is never used; a torn read only warns and recompiles. Set
# JAX_COMPILATION_CACHE_DIR= (empty) to compile everything afresh.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "diffusion-tests-xla-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from configs import digits_tiny  # noqa: E402
from tests.xla_optimisations import optimisations_off  # noqa: E402 (imports jax)


@pytest.fixture
def tiny_config():
    """The shared small config (configs/digits_tiny.py): a U-Net that compiles and steps in
    seconds. Tests change their copy freely."""
    return digits_tiny.get_config()


@pytest.fixture
def smallest_config(tiny_config):
    """tiny_config with a one-level 8-channel U-Net and no attention: for tests of what goes
    around the network (loop, checkpoints, compile reports), where only compile time matters."""
    tiny_config.model.update(
        base_channels=8, num_groups=4, channel_mult=(1,), attention_resolutions=()
    )
    return tiny_config


@pytest.fixture(scope="session")
def tiny_clip_model(tmp_path_factory):
    """(directory, torch CLIPModel): a tiny random CLIPModel with both towers, built once
    (tests/models/text_encoders/clip_checkpoint.py)."""
    from tests.models.text_encoders.clip_checkpoint import clip_model_checkpoint  # noqa: PLC0415

    return clip_model_checkpoint(tmp_path_factory.mktemp("clip_model"))


@pytest.fixture(scope="module")
def fast_compiles():
    """For numbers that do not depend on XLA's optimisation passes: skip them (faster compiles)."""
    with optimisations_off():
        yield


# The longest test files, longest first (seconds on the CI machine, docs/PERFORMANCE.md). CI runs
# `-n 2 --dist loadfile`: each worker takes whole files in collection order, so a long file
# collected last would run alone at the end; started first, the short files fill in around it.
LONGEST_FIRST = (
    "tests/test_notebooks.py",  # ~360 s: two notebooks in real kernels
    "tests/training/test_compile_run.py",  # ~300 s: TPU and CPU compiles
    "tests/test_fault_injection.py",  # ~185 s
    "tests/training/test_latent.py",  # ~150 s with the latent resume
    "tests/training/test_configs_shard.py",  # ~135 s for the CIFAR text FSDP compile
    "tests/test_gcs_runs.py",  # ~110 s per kill-and-resume run
    "tests/test_multihost.py",
)


def pytest_collection_modifyitems(config, items):
    """Longest files first (stable for the rest), the same order in every xdist worker."""
    rank = {path: index for index, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
