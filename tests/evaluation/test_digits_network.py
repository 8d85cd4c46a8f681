"""evaluation/digits_network.py: the shipped digits feature network, its training and loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evaluation import digits_network


def test_shipped_weights_classify_held_out_real_digits():
    network = digits_network.load()
    (train_x, train_y), (test_x, test_y) = digits_network.split_digits()
    assert (network.name, network.feature_dim, network.num_classes) == ("digits", 64, 10)
    assert len(test_x) == 360 and len(train_x) == 1437  # 20% held out, stratified
    assert digits_network.accuracy(network, test_x, test_y) >= 0.97
    assert network.weights_id.startswith("digits_mlp.safetensors:")
    features, logits = network.apply(network.params, jnp.asarray(test_x[:5]))
    assert features.shape == (5, 64) and logits.shape == (5, 10)


def test_larger_and_rgb_images_are_averaged_down_to_the_8x8_grey_pixels():
    _, (test_x, _) = digits_network.split_digits()
    small = jnp.asarray(test_x[:4])  # [4, 8, 8, 1]
    big_rgb = jnp.repeat(jnp.repeat(jnp.repeat(small, 2, axis=1), 2, axis=2), 3, axis=3)
    np.testing.assert_allclose(
        digits_network.to_pixels(big_rgb), digits_network.to_pixels(small), atol=1e-6
    )
    with pytest.raises(ValueError, match="8x8 images.*got 12x12"):
        digits_network.to_pixels(jnp.zeros((1, 12, 12, 1)))


def test_training_is_reproducible_and_round_trips_through_safetensors(tmp_path):
    first, second = digits_network.train(seed=3, steps=50), digits_network.train(seed=3, steps=50)
    jax.tree.map(np.testing.assert_array_equal, first, second)
    path = tmp_path / "w.safetensors"
    digits_network.save(first, path)
    loaded = digits_network.load(path)
    jax.tree.map(np.testing.assert_array_equal, loaded.params, first)


def test_missing_or_wrong_weights_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors.*python -m evaluation"):
        digits_network.load(tmp_path / "nowhere.safetensors")
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(digits_network.DEFAULT_WEIGHTS))
    save_file({**tensors, "hidden.kernel": np.zeros((3, 3), np.float32)}, str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"hidden.kernel.*\(64, 256\), got \(3, 3\)"):
        digits_network.load(tmp_path / "a")
    del tensors["classes.bias"]
    save_file(tensors, str(tmp_path / "b"))
    with pytest.raises(ValueError, match=r"classes.bias.*got missing"):
        digits_network.load(tmp_path / "b")
