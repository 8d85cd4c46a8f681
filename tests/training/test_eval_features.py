"""training/eval_features.py: rows read once, moments and rows gathered in global order."""

import jax
import numpy as np
import pytest

import sharding
from evaluation import digits_network
from training.eval_features import FeatureAccumulator, local_rows, make_featurizer


@pytest.mark.parametrize("data, tensor", [(8, 1), (4, 2), (2, 4)])
def test_every_row_is_read_once_even_when_replicated_over_the_tensor_axis(data, tensor):
    mesh = sharding.make_mesh(sharding.MeshConfig(data=data, tensor=tensor))
    rows = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    array = jax.device_put(rows, sharding.batch_sharding(mesh))
    indices, read = local_rows(array)
    np.testing.assert_array_equal(indices, np.arange(16))
    np.testing.assert_array_equal(read, rows)


def test_accumulated_moments_and_rows_equal_one_shot_in_global_order():
    network = digits_network.load()
    accumulator = FeatureAccumulator.empty(network, keep_features=True)
    rng = np.random.default_rng(0)
    features, logits = rng.normal(size=(50, 64)), rng.normal(size=(50, 10))
    order = rng.permutation(50)
    for part in np.array_split(order, 4):  # rows arrive out of order, as processes interleave
        accumulator.add(part, features[part], logits[part])
    gathered = accumulator.finish()
    np.testing.assert_allclose(gathered.stats.mean, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(gathered.stats.covariance, np.cov(features.T), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(gathered.features, features.astype(np.float32))
    np.testing.assert_array_equal(gathered.logits, logits.astype(np.float32))


def test_featurizer_quantises_to_8_bits_and_matches_the_network_on_one_device():
    network = digits_network.load()
    mesh = sharding.make_mesh(sharding.MeshConfig())
    images = np.random.default_rng(1).uniform(-1, 1, size=(16, 8, 8, 1)).astype(np.float32)
    features, logits = make_featurizer(network, mesh)(
        jax.device_put(images, sharding.batch_sharding(mesh))
    )
    levels = np.round((images + 1.0) * 127.5) / 255.0
    want_features, want_logits = network.apply(network.params, levels)
    np.testing.assert_allclose(features, want_features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-6)
