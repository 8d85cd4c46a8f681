"""Smoke tests of benchmarks/peak.py and benchmarks/train_step.py on tiny programs."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import peak
from benchmarks import train_step as bench


def test_cost_analysis_counts_a_matmul_in_closed_form():
    a, b = jnp.ones((64, 96)), jnp.ones((96, 32))
    compiled = jax.jit(jnp.matmul).lower(a, b).compile()
    assert peak.cost_flops(compiled) == peak.matmul_flops(64, 96, 32) == 2 * 64 * 96 * 32


def test_cost_analysis_counts_a_same_conv_without_padded_taps():
    x, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 16))
    compiled = jax.jit(peak.conv3x3).lower(x, kernel).compile()
    assert peak.cost_flops(compiled) == peak.conv3x3_same_flops(2, 8, 8, 4, 16)
    assert peak.conv3x3_same_flops(2, 8, 8, 4, 16) < 2 * 2 * 8 * 8 * 4 * 16 * 9


def test_loops_are_detected_because_their_body_is_counted_once():
    def scanned(x):
        return jax.lax.scan(lambda h, _: (h @ jnp.ones((16, 16)), None), x, None, length=4)[0]

    compiled = jax.jit(scanned).lower(jnp.ones((8, 16))).compile()
    assert peak.has_loops(compiled)
    assert peak.cost_flops(compiled) < 2 * peak.matmul_flops(8, 16, 16)  # not 4 x one matmul
    plain = jax.jit(jnp.matmul).lower(jnp.ones((4, 4)), jnp.ones((4, 4))).compile()
    assert not peak.has_loops(plain)


def test_measured_peaks_are_positive():
    assert peak.measure_matmul(128, jnp.float32, repeats=2) > 0
    assert peak.measure_conv(1, 8, 16, jnp.float32, repeats=2) > 0


@pytest.mark.parametrize(
    ("kind", "name"),
    [("NVIDIA H100 80GB HBM3", "H100 SXM"), ("TPU v5 lite", "TPU v5e"), ("TPU v5p", "TPU v5p")],
)
def test_datasheet_peak_by_device_kind(kind, name):
    assert peak.datasheet_peak(kind)[0] == name
    assert peak.datasheet_peak("cpu") is None


DIT_DEPTH, DIT_HIDDEN, DIT_TOKENS = 4, 64, 16


def _tiny(model: str):
    config = bench.model_config(model, batch=2)
    if model == "unet":
        config.model.base_channels = 16
        config.model.channel_mult = (1, 2)
        config.model.num_res_blocks = 1
        config.model.num_groups = 8
    else:
        config.model.depth, config.model.hidden_size = DIT_DEPTH, DIT_HIDDEN
        config.model.num_heads = 2
        config.model.patch_size = 8  # 32 / 8 = 4 x 4 tokens
    return config


@pytest.fixture
def fast_compile():
    """Compiles in about half the time; the FLOP counts are the same (checked by hand)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["unet", "dit"])
def test_train_step_measurement_is_sane(model, fast_compile):
    config = _tiny(model)
    m = bench.measure_train_step(config, steps=2, warmup=1, devices=jax.devices()[:1])
    assert m.devices == 1 and m.batch == 2 and m.params > 0
    assert m.step_s > 0 and m.compile_s > 0 and m.examples_per_s == 2 / m.step_s
    assert m.aliased_mib > 0  # the donated state is reused for the new state
    if model == "unet":  # every weight is used at least once per pixel row of the 16x16 level
        assert m.flops > 6 * m.params * 2
    else:
        # Every block's qkv, out and MLP kernels (12 h^2 weights) at 2 FLOPs forward + 4 backward
        # per token: the scanned blocks must be counted depth times, not once.
        rows = DIT_TOKENS * 2
        assert m.flops > 6 * 12 * DIT_HIDDEN**2 * rows * DIT_DEPTH


def test_digits_pipeline_delivers_positive_rate():
    from benchmarks import input_pipeline as pipeline_bench

    delivered, on_device = pipeline_bench.measure_source("digits", batch=8, count=5, warmup=1)
    assert delivered > 0 and on_device > 0
