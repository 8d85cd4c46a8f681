"""benchmarks/conv_gradients.py: one row runs every variant on a small shape."""

from benchmarks import conv_gradients


def test_row_times_forward_kernel_gradients_and_full_gradients():
    times = conv_gradients.row(1, 32, 4, 3, 3, repeats=1)
    assert len(times) == 5 and all(t > 0 for t in times)
    assert set(conv_gradients.conv_fn("dots")(*_args()).shape) == {1, 32, 3}


def _args():
    import jax.numpy as jnp

    return jnp.ones((1, 32, 32, 4)), jnp.ones((3, 3, 4, 3))
