"""CLIP text transformer: parity with transformers' CLIPTextModel, EOS pooling, padding."""

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from models.text_encoders import clip, load_text_encoder
from tests.models.text_encoders import checkpoints

TEXTS = [
    "a photo of a cat",
    "an astronaut riding a horse on the moon at night with neon lights",  # truncated
    "",
]
TOLERANCE = 1e-4


def _assert_matches_torch(encoder, model, texts=TEXTS):
    """Every position (padding too: causal attention sees only real tokens) and the pooled."""
    input_ids, mask = encoder.tokenize(texts)
    ours = encoder.apply(encoder.params, input_ids, mask)
    hidden, pooled = checkpoints.torch_outputs(model, input_ids, mask)
    assert checkpoints.max_error(ours.tokens, hidden) < TOLERANCE
    assert checkpoints.max_error(ours.pooled, pooled) < TOLERANCE


def test_matches_transformers_clip_text_model(tiny_clip):
    directory, model = tiny_clip
    encoder = load_text_encoder("clip", directory, max_length=checkpoints.MAX_POSITIONS)
    assert (encoder.hidden_size, encoder.pooled_size) == (32, 32)
    _assert_matches_torch(encoder, model)


def test_gelu_and_legacy_eos_id_match_transformers(tmp_path):
    """hidden_act='gelu' and eos_token_id=2 (pooling at the largest token id)."""
    directory, model = checkpoints.clip_checkpoint(tmp_path, hidden_act="gelu", legacy_eos=True)
    encoder = load_text_encoder("clip", directory, max_length=12)
    _assert_matches_torch(encoder, model)


def test_eos_positions_follow_transformers_rule():
    input_ids = jnp.array([[5, 9, 7, 7, 7], [5, 3, 7, 9, 7]])
    # First occurrence of the EOS id (padding may repeat it).
    np.testing.assert_array_equal(clip.eos_positions(input_ids, eos_token_id=7), [2, 2])
    # Legacy configs: position of the largest id.
    np.testing.assert_array_equal(clip.eos_positions(input_ids, eos_token_id=2), [1, 3])


def test_padding_does_not_change_real_tokens(tiny_clip):
    directory, _ = tiny_clip
    short = load_text_encoder("clip", directory, max_length=10).encode(["a photo of a cat"])
    long = load_text_encoder("clip", directory, max_length=16)
    alone = long.encode(["a photo of a cat"])
    batched = long.encode(["a photo of a cat", "two people walking along the beach at sunset"])
    real = int(short.mask.sum())
    assert real == 7  # <|startoftext|> a photo of a cat <|endoftext|>
    for other in (alone, batched):
        np.testing.assert_allclose(other.tokens[0, :real], short.tokens[0, :real], atol=1e-5)
        np.testing.assert_allclose(other.pooled[0], short.pooled[0], atol=1e-5)


def test_loads_text_model_prefix_and_full_clip_checkpoints(tiny_clip, tmp_path):
    """Checkpoints written before transformers 5, or by CLIPModel, prefix 'text_model.'."""
    directory, model = tiny_clip
    tensors = load_file(directory / "model.safetensors")
    prefixed = {f"text_model.{name}": array for name, array in tensors.items()}
    prefixed["text_model.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    prefixed["visual_projection.weight"] = np.zeros((4, 8), np.float32)
    prefixed["logit_scale"] = np.zeros((), np.float32)
    save_file(prefixed, tmp_path / "model.safetensors")
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    encoder = load_text_encoder("clip", tmp_path, max_length=12)
    _assert_matches_torch(encoder, model)


def test_rejects_max_length_beyond_positions(tiny_clip):
    with pytest.raises(ValueError, match="exceeds the 16 positions"):
        load_text_encoder("clip", tiny_clip[0], max_length=17)
