import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import layers


def test_timestep_embedding_matches_the_formula():
    t = jnp.array([0.0, 1.0, 17.0, 999.0])
    dim = 8
    emb = np.asarray(layers.timestep_embedding(t, dim))
    half = dim // 2
    for row, step in enumerate(np.asarray(t)):
        for i in range(half):
            freq = math.exp(-math.log(10_000) * i / (half - 1))
            assert math.isclose(emb[row, i], math.sin(step * freq), abs_tol=1e-4)
            assert math.isclose(emb[row, half + i], math.cos(step * freq), abs_tol=1e-4)


def test_timestep_embedding_takes_int_steps_pads_odd_dims_and_rejects_tiny_dims():
    steps = jnp.array([0, 3, 250])
    np.testing.assert_array_equal(
        layers.timestep_embedding(steps, 16), layers.timestep_embedding(steps.astype(float), 16)
    )
    odd = layers.timestep_embedding(steps, 9)
    assert odd.shape == (3, 9)
    np.testing.assert_array_equal(odd[:, :8], layers.timestep_embedding(steps, 8))
    np.testing.assert_array_equal(odd[:, 8], 0.0)
    with pytest.raises(ValueError, match="dim >= 4"):
        layers.timestep_embedding(steps, 2)


def test_resample_shapes_and_every_param_is_named():
    rngs = nnx.Rngs(0)
    x = jnp.ones((1, 8, 8, 16))
    assert layers.Downsample(16, rngs=rngs)(x).shape == (1, 4, 4, 16)
    assert layers.Upsample(16, rngs=rngs)(x).shape == (1, 16, 16, 16)
    block = layers.ResBlock(16, 32, 64, num_groups=8, dropout=0.0, rngs=rngs)
    assert block(x, jnp.ones((1, 64))).shape == (1, 8, 8, 32)
    specs = jax.tree.leaves(
        nnx.get_partition_spec(nnx.state(block, nnx.Param)), is_leaf=lambda s: s is not None
    )
    assert specs and all(spec is not None and len(tuple(spec)) > 0 for spec in specs)


@pytest.mark.parametrize("flip_sin_to_cos, freq_shift", [(True, 0), (False, 0), (True, 1)])
def test_timestep_embedding_flavours_match_the_formula(flip_sin_to_cos, freq_shift):
    """diffusers' `Timesteps(dim, flip_sin_to_cos, downscale_freq_shift)`, written out."""
    t = np.array([0.0, 1.0, 17.0, 999.0])
    dim, half = 8, 4
    emb = layers.timestep_embedding(
        jnp.asarray(t), dim, flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift
    )
    angles = t[:, None] * np.exp(-math.log(10_000) * np.arange(half) / (half - freq_shift))
    waves = (
        [np.cos(angles), np.sin(angles)] if flip_sin_to_cos else [np.sin(angles), np.cos(angles)]
    )
    np.testing.assert_allclose(emb, np.concatenate(waves, axis=-1), atol=1e-4)
    assert layers.timestep_embedding(jnp.asarray(t), 2, freq_shift=0).shape == (4, 2)


@pytest.mark.parametrize("padding, pads", [(0, ((0, 1), (0, 1))), (1, ((1, 1), (1, 1)))])
def test_downsample_padding_pads_where_it_says(padding, pads):
    """0: one zero row / column at the bottom / right (TensorFlow 'SAME'); 1: on every side."""
    block = layers.Downsample(4, padding=padding, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
    expected = jax.lax.conv_general_dilated(
        jnp.pad(x, ((0, 0), *pads, (0, 0))),
        block.conv.kernel[...],
        (2, 2),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(block(x), expected + block.conv.bias[...], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="padding=2"):
        layers.Downsample(4, padding=2, rngs=nnx.Rngs(0))
