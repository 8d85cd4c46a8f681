"""T5 encoder: parity with transformers' T5EncoderModel, position buckets, padding."""

import numpy as np
import pytest
import torch
from transformers.models.t5.modeling_t5 import T5Attention

from models.text_encoders import load_text_encoder, t5
from tests.models.text_encoders import checkpoints

TEXTS = [
    "a photo of a cat",
    "an astronaut riding a horse on the moon at night with neon lights",  # truncated
    "",
]
TOLERANCE = 1e-4


def _assert_matches_torch(encoder, model):
    input_ids, mask = encoder.tokenize(TEXTS)
    ours = encoder.apply(encoder.params, input_ids, mask)
    hidden, _ = checkpoints.torch_outputs(model, input_ids, mask)
    assert checkpoints.max_error(ours.tokens, hidden) < TOLERANCE
    weights = mask[..., None]
    mean = (hidden * weights).sum(1) / weights.sum(1)
    assert checkpoints.max_error(ours.pooled, mean) < TOLERANCE


def test_gated_gelu_matches_transformers(tiny_t5):
    directory, model = tiny_t5
    encoder = load_text_encoder("t5", directory, max_length=24)
    assert (encoder.hidden_size, encoder.pooled_size) == (32, 32)
    _assert_matches_torch(encoder, model)


def test_relu_matches_transformers(tmp_path):
    directory, model = checkpoints.t5_checkpoint(tmp_path, feed_forward_proj="relu")
    _assert_matches_torch(load_text_encoder("t5", directory, max_length=24), model)


@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20)])
def test_relative_position_buckets_match_transformers(num_buckets, max_distance):
    """Lengths past every log-bucket boundary (16, 32, 64 for the defaults) and max_distance."""
    length = 300
    positions = torch.arange(length)
    expected = T5Attention._relative_position_bucket(
        positions[None, :] - positions[:, None],
        bidirectional=True,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    ours = t5.relative_position_buckets(length, num_buckets, max_distance)
    np.testing.assert_array_equal(ours, expected.numpy())


def test_padding_does_not_change_real_tokens(tiny_t5):
    directory, _ = tiny_t5
    short = load_text_encoder("t5", directory, max_length=12).encode(["a photo of a cat"])
    long = load_text_encoder("t5", directory, max_length=20)
    alone = long.encode(["a photo of a cat"])
    batched = long.encode(["a photo of a cat", "two people walking along the beach at sunset"])
    real = int(short.mask.sum())
    assert 1 < real < 12
    for other in (alone, batched):
        np.testing.assert_allclose(other.tokens[0, :real], short.tokens[0, :real], atol=1e-5)
        np.testing.assert_allclose(other.pooled[0], short.pooled[0], atol=1e-5)


def test_feed_forward_proj_names_activation_and_gating():
    gated_gelu = t5.T5Config(feed_forward_proj="gated-gelu")
    assert (gated_gelu.activation, gated_gelu.gated) == ("gelu_new", True)  # tanh GELU, as HF
    gated_silu = t5.T5Config(feed_forward_proj="gated-silu")
    assert (gated_silu.activation, gated_silu.gated) == ("silu", True)
    relu = t5.T5Config(feed_forward_proj="relu")
    assert (relu.activation, relu.gated) == ("relu", False)
