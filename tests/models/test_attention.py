"""models/attention.py: the attention function against the softmax formula and JAX's choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import attention


def test_attention_matches_explicit_softmax():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 8)) for i in range(3))
    out = attention.attention(q, k, v, num_heads=2)
    qh, kh, vh = (a.reshape(2, 5, 2, 4).transpose(0, 2, 1, 3) for a in (q, k, v))
    weights = jax.nn.softmax(qh @ kh.transpose(0, 1, 3, 2) / 2.0, axis=-1)
    expected = (weights @ vh).transpose(0, 2, 1, 3).reshape(2, 5, 8)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_mask", [False, True])
def test_xla_attention_impl_matches_jaxs_choice(with_mask):
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 8)) for i in range(3))
    mask = jnp.array([True, True, False, True, False])[None, None, None, :] if with_mask else None
    chosen = attention.attention(q, k, v, num_heads=2, mask=mask)
    xla = attention.attention(q, k, v, num_heads=2, mask=mask, implementation="xla")
    np.testing.assert_allclose(xla, chosen, rtol=1e-6, atol=1e-6)
