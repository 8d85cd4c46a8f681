"""The Pallas TPU flash-attention path (model.attention_impl='pallas_tpu'), run on CPU in Pallas'
TPU interpret mode against jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sharding
from configs import digits_tiny
from models import attention, flash_attention, registry
from models.functional import functionalize

# Measured on CPU (float32, interpret mode): forward <= 5e-7, gradients <= 2e-6 absolute, on
# outputs and gradients of size 0.3-7.
FORWARD_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=5e-5)


@pytest.fixture(autouse=True)
def _interpret(fast_compiles):
    """Interpret mode (CPU); compiles without XLA's optimisation passes (same numbers, faster)."""
    with flash_attention.interpret():
        yield


def _inputs(batch, length, key_length, heads, head_dim, seed=0):
    q, k, v = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(q, (batch, length, heads, head_dim)),
        jax.random.normal(k, (batch, key_length, heads, head_dim)),
        jax.random.normal(v, (batch, key_length, heads, head_dim)),
    )


def _loss(attend):
    """(a scalar weighing every output element differently, the output)."""

    def loss(q, k, v, key_mask):
        out = attend(q, k, v, key_mask)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

    return loss


def _reference(q, k, v, key_mask):
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


@pytest.mark.parametrize(
    ("length", "expected"),
    [(4096, (512, 4096)), (1024, (512, 1024)), (256, (256, 256)), (384, (128, 384)),
     (300, (128, 384)), (77, (128, 128)), (12, (128, 128)), (64, (128, 128))],
)  # fmt: skip
def test_sequences_pad_to_a_multiple_of_128_tiled_by_the_largest_dividing_block(length, expected):
    assert flash_attention.block_and_padded_length(length) == expected


@pytest.mark.parametrize(
    ("length", "key_length", "masked"),
    [(256, 256, False), (200, 200, False), (130, 77, True)],
    ids=["self_whole_blocks", "self_padded", "cross_77_masked"],
)
def test_forward_and_gradients_match_dot_product_attention(length, key_length, masked):
    """Masked: example 0 attends to its first 5 keys, example 1 to all, example 2 to none."""
    q, k, v = _inputs(3, length, key_length, 2, 16)
    key_mask = None
    if masked:
        key_mask = jnp.arange(key_length)[None, :] < jnp.array([[5], [key_length], [0]])
    grads = {}
    for name, attend in (("pallas", flash_attention.attention), ("reference", _reference)):
        value_and_grad = jax.value_and_grad(_loss(attend), argnums=(0, 1, 2), has_aux=True)
        grads[name] = jax.jit(value_and_grad)(q, k, v, key_mask)
    ((value, out), grad), ((value_reference, out_reference), grad_reference) = grads.values()
    np.testing.assert_allclose(out, out_reference, **FORWARD_TOL)
    np.testing.assert_allclose(value, value_reference, rtol=1e-5)
    for got, want in zip(grad, grad_reference, strict=True):
        np.testing.assert_allclose(got, want, **GRAD_TOL)
    if masked:  # no key to attend: the mean of the values, as jax.nn.dot_product_attention
        np.testing.assert_allclose(out[2], jnp.broadcast_to(v[2].mean(0), out[2].shape), atol=1e-6)


def test_layers_attention_routes_pallas_tpu_and_takes_key_masks_only():
    q = jax.random.normal(jax.random.key(0), (2, 16, 8))  # [B, T, C]
    k, v = (jax.random.normal(jax.random.key(i), (2, 5, 8)) for i in (1, 2))
    mask = jnp.array([[True, True, False, True, False], [True] * 5])[:, None, None, :]
    attend = jax.jit(attention.attention, static_argnames=("num_heads", "implementation"))
    np.testing.assert_allclose(
        attend(q, k, v, num_heads=2, mask=mask, implementation="pallas_tpu"),
        attend(q, k, v, num_heads=2, mask=mask, implementation="xla"),
        **FORWARD_TOL,
    )
    with pytest.raises(ValueError, match=r"'pallas_tpu' takes masks over the keys only"):
        attention.attention(q, k, v, 2, jnp.ones((2, 1, 16, 5), bool), implementation="pallas_tpu")


@pytest.mark.parametrize("axes", [dict(data=4, tensor=2), dict(data=2, fsdp=2, tensor=2)])
def test_runs_per_device_on_a_mesh_that_splits_the_batch_and_the_heads(axes):
    """Inside the train step's sharding context the kernel runs in a shard_map: the same numbers
    as the partitioned XLA path, the output still split, and no all-gather."""
    mesh = sharding.make_mesh(sharding.MeshConfig(**axes))
    q = jax.random.normal(jax.random.key(0), (8, 64, 16))  # [B, T, C], 4 heads of 4
    k, v = (jax.random.normal(jax.random.key(i), (8, 12, 16)) for i in (1, 2))
    mask = (jnp.arange(12)[None, :] < jnp.arange(8)[:, None] + 3)[:, None, None, :]

    def attend_and_grad(q, k, v, implementation):
        def attend(q):
            return attention.attention(q, k, v, 4, mask, implementation=implementation)

        with sharding.activation_constraints(mesh):
            return attend(q), jax.grad(lambda q: jnp.sum(attend(q) ** 2))(q)

    run = jax.jit(
        attend_and_grad,
        in_shardings=(sharding.batch_sharding(mesh),) * 3,
        static_argnums=3,
    )
    out, grad = run(q, k, v, "pallas_tpu")
    out_xla, grad_xla = run(q, k, v, "xla")
    np.testing.assert_allclose(out, out_xla, **FORWARD_TOL)
    np.testing.assert_allclose(grad, grad_xla, **GRAD_TOL)
    assert out.sharding.spec[0] in ("data", ("data", "fsdp"))  # the batch stays split
    compiled = run.lower(q, k, v, "pallas_tpu").compile().as_text()
    assert "all-gather(" not in compiled


def test_whole_unet_gives_the_same_output_as_with_xla():
    """The tests' tiny config with text cross-attention: self-attention over the 4x4 map (16
    queries, padded to 128) and cross-attention to 7 context tokens, 2 of them masked."""
    config = digits_tiny.get_config()
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    cond = dict(
        context=jax.random.normal(jax.random.key(1), (2, 7, 12)),
        context_mask=jnp.arange(7)[None, :] < jnp.array([[5], [7]]),
    )
    outputs = []
    for impl in ("xla", "pallas_tpu"):
        config.model.attention_impl = impl
        model = functionalize(
            registry.build_model(
                registry.make_model_config(config.model, image_size=8, channels=1, context_dim=12)
            )
        )
        # N(0, 0.1^2) weights: the zero-initialised output layers would hide the attention.
        rng = np.random.default_rng(0)
        params = jax.tree.map(
            lambda leaf, rng=rng: jnp.asarray(0.1 * rng.standard_normal(leaf.shape), leaf.dtype),
            model.abstract_params,
        )
        outputs.append(jax.jit(model.apply)(params, x, jnp.array([10, 500]), **cond))
    out_xla, out = outputs
    assert float(jnp.abs(out_xla).max()) > 0.1
    np.testing.assert_allclose(out, out_xla, **FORWARD_TOL)
