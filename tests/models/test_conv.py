"""models/conv.py: the matmul forms give lax.conv_general_dilated's values and gradients."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

import sharding
from models import conv, layers, logical
from models.unet import UNetConfig


def _conv_loss(conv_fn, padding):
    def loss(x, kernel):
        numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, conv.NHWC)
        y = conv_fn(x, kernel, (1, 1), padding, dimension_numbers=numbers)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1]))

    return loss


def _values_and_grads(conv_fn, padding, x, kernel):
    loss = _conv_loss(conv_fn, padding)
    return loss(x, kernel), jax.grad(loss, argnums=(0, 1))(x, kernel)


@pytest.mark.parametrize(
    "shape, kernel_size, padding",
    [
        ((2, 32, 32, 8, 4), 3, "SAME"),  # shifted kernel gradient (>= 32 x 32)
        ((3, 32, 40, 5, 6), 3, ((1, 1), (1, 1))),  # odd batch, non-square, explicit pads
        ((2, 8, 8, 8, 4), 3, "SAME"),  # below 32 x 32: XLA's kernel gradient
        ((2, 8, 8, 8, 4), 1, "SAME"),  # pointwise
        ((2, 8, 8, 8, 4), 1, "VALID"),
    ],
)
def test_matmul_forms_match_lax_values_and_gradients(shape, kernel_size, padding):
    batch, height, width, channels, out_channels = shape
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (batch, height, width, channels))
    kernel = jax.random.normal(keys[1], (kernel_size, kernel_size, channels, out_channels))
    want_value, want_grads = _values_and_grads(lax.conv_general_dilated, padding, x, kernel)
    got_value, got_grads = jax.jit(
        lambda x, k: _values_and_grads(conv.conv_general_dilated, padding, x, k)
    )(x, kernel)
    np.testing.assert_allclose(got_value, want_value, rtol=1e-4, atol=1e-3)
    for got, want in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_shifted_kernel_gradient_is_the_sum_of_shifted_outer_products():
    # Closed form: dK[i, j] = sum_{b, h, w} x_pad[b, h + i, w + j]^T g[b, h, w], in numpy.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    grad_out = rng.standard_normal((2, 32, 32, 2)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.stack(
        [
            np.einsum("bhwc,bhwo->co", padded[:, i : i + 32, j : j + 32], grad_out)
            for i in range(3)
            for j in range(3)
        ]
    ).reshape(3, 3, 3, 2)
    got = conv.shifted_kernel_gradient(jnp.asarray(x), jnp.asarray(grad_out))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_shifted_kernel_gradient_blocks_per_device_and_matches_on_a_sharded_batch():
    mesh = jax.make_mesh((2, 4, 1), sharding.MESH_AXES)  # the batch splits 8 ways
    keys = jax.random.split(jax.random.key(2), 2)
    x = jax.random.normal(keys[0], (16, 32, 32, 4))
    grad_out = jax.random.normal(keys[1], (16, 32, 32, 3))
    want = conv.shifted_kernel_gradient(x, grad_out)
    batch_sharding = NamedSharding(mesh, PartitionSpec(sharding.BATCH_AXES))

    def sharded(x, grad_out):
        with sharding.activation_constraints(mesh):
            assert logical.split_count("batch", x.shape[0]) == 8
            return conv.shifted_kernel_gradient(x, grad_out)

    step = jax.jit(sharded, in_shardings=(batch_sharding, batch_sharding))
    np.testing.assert_allclose(step(x, grad_out), want, rtol=1e-5, atol=1e-4)
    # Each device sums its own slabs: one all-reduce at the end, no batch gathered.
    # (Without the context XLA all-gathers the scanned batch.)
    compiled = step.lower(x, grad_out).compile().as_text()
    assert len(re.findall(r"all-gather(-start)?\(", compiled)) == 0
    assert len(re.findall(r"all-reduce(-start)?\(", compiled)) == 1
    assert logical.split_count("batch", 16) == 1  # outside the context
    with logical.resolving(lambda a, names: a, {"batch": 3}):
        assert logical.split_count("batch", 16) == 1  # 3 does not divide 16


def test_other_convolutions_fall_back_to_lax():
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 4))
    kernel = jax.random.normal(jax.random.key(4), (3, 3, 4, 4))
    numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, conv.NHWC)
    for strides in ((2, 2), (1, 1)):
        kwargs = dict(dimension_numbers=numbers, rhs_dilation=(2, 2) if strides == (1, 1) else None)
        want = lax.conv_general_dilated(x, kernel, strides, "SAME", **kwargs)
        got = conv.conv_general_dilated(x, kernel, strides, "SAME", **kwargs)
        np.testing.assert_array_equal(got, want)


def test_conv_layer_impls_share_parameters_and_outputs():
    x = jax.random.normal(jax.random.key(5), (2, 32, 32, 4))
    outputs, trees = [], []
    for impl in ("xla", "dots"):
        for kernel in (1, 3):
            layer = layers.conv(4, 6, kernel=kernel, impl=impl, rngs=nnx.Rngs(0))
            outputs.append(layer(x))
            trees.append(jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(layer, nnx.Param))))
    for xla, dots in ((0, 2), (1, 3)):
        np.testing.assert_allclose(outputs[dots], outputs[xla], rtol=1e-5, atol=1e-5)
        assert trees[dots] == trees[xla]


def test_unet_refuses_an_unknown_conv_impl():
    with pytest.raises(
        ValueError, match=r"model.conv_impl='cudnn' is not one of \['dots', 'xla'\]"
    ):
        UNetConfig(conv_impl="cudnn").validate()
