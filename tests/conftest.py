"""Test setup: 8 simulated CPU devices, so every sharded path runs in tests."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402 (after the environment above)
import pytest  # noqa: E402

from configs import digits_tiny  # noqa: E402


@pytest.fixture
def tiny_config():
    """The shared small config (configs/digits_tiny.py): a U-Net that compiles and steps in
    seconds. Tests change their copy freely."""
    return digits_tiny.get_config()


@pytest.fixture(scope="session")
def tiny_clip_model(tmp_path_factory):
    """(directory, torch CLIPModel): a tiny random CLIPModel with both towers, built once
    (tests/models/text_encoders/clip_checkpoint.py)."""
    from tests.models.text_encoders.clip_checkpoint import clip_model_checkpoint  # noqa: PLC0415

    return clip_model_checkpoint(tmp_path_factory.mktemp("clip_model"))


@pytest.fixture(scope="module")
def fast_compiles():
    """For numbers that do not depend on XLA's optimisation passes: skip them (faster compiles)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
