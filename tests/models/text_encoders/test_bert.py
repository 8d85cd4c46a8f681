"""BERT encoder: parity with transformers' BertModel and with sentence-transformers'
all-MiniLM-L6-v2 (real weights), padding."""

import numpy as np
import pytest

from models.text_encoders import bert, load_text_encoder
from tests.models.text_encoders import checkpoints

TOLERANCE = 1e-4
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome!",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons.",
]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return load_text_encoder("minilm", minilm_dir, max_length=32)


@pytest.fixture(scope="module")
def sentence_transformer(minilm_dir):
    """The reference, built offline from the same directory (modules.json: BERT, mean, norm)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


def test_matches_transformers_bert_model(tiny_bert):
    directory, model = tiny_bert
    encoder = load_text_encoder("minilm", directory, max_length=checkpoints.MAX_POSITIONS)
    texts = ["a photo of a cat.", "an astronaut riding a horse on the moon at night, neon!", ""]
    input_ids, mask = encoder.tokenize(texts)
    ours = encoder.apply(encoder.params, input_ids, mask)
    hidden, _ = checkpoints.torch_outputs(model, input_ids, mask)
    assert checkpoints.max_error(ours.tokens, hidden) < TOLERANCE
    weights = mask[..., None]
    mean = (hidden * weights).sum(1) / weights.sum(1)
    expected = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    assert checkpoints.max_error(ours.pooled, expected) < TOLERANCE


def test_minilm_matches_sentence_transformers(minilm, sentence_transformer):
    ours = minilm.encode(SENTENCES)
    expected = sentence_transformer.encode(SENTENCES, convert_to_numpy=True)
    assert (minilm.hidden_size, minilm.pooled_size) == (384, 384)
    assert ours.pooled.shape == expected.shape == (4, 384)
    np.testing.assert_allclose(ours.pooled, expected, atol=TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(ours.pooled, axis=-1), 1.0, atol=1e-5)


def test_minilm_tokens_match_sentence_transformers(minilm, sentence_transformer):
    """The last hidden state ('token_embeddings') too, on the same ids."""
    features = sentence_transformer.tokenize(SENTENCES)
    input_ids, mask = minilm.tokenize(SENTENCES)
    real = mask.sum(1).max()
    np.testing.assert_array_equal(input_ids[:, :real], features["input_ids"].numpy()[:, :real])
    token_embeddings = sentence_transformer.forward(features)["token_embeddings"].detach().numpy()
    ours = minilm.encode(SENTENCES).tokens[:, :real]
    valid = mask[:, :real, None]
    np.testing.assert_allclose(
        np.where(valid, ours, 0), np.where(valid, token_embeddings, 0), atol=TOLERANCE
    )


def test_minilm_embeddings_mean_something(minilm):
    """Real weights: a paraphrase is closer than an unrelated sentence."""
    pooled = np.asarray(minilm.encode(SENTENCES).pooled)
    similarity = pooled @ pooled.T
    assert similarity[0, 1] > 0.5 > similarity[0, 3]


def test_padding_does_not_change_real_tokens(minilm_dir, minilm):
    short = load_text_encoder("minilm", minilm_dir, max_length=10).encode(["A man is eating."])
    alone = minilm.encode(["A man is eating."])
    batched = minilm.encode(["A man is eating.", SENTENCES[3]])
    real = int(short.mask.sum())
    assert real == 7  # [CLS] a man is eating . [SEP]
    for other in (alone, batched):
        np.testing.assert_allclose(other.tokens[0, :real], short.tokens[0, :real], atol=1e-5)
        np.testing.assert_allclose(other.pooled[0], short.pooled[0], atol=1e-6)


def test_only_absolute_position_embeddings():
    with pytest.raises(ValueError, match="relative_key"):
        bert.BertConfig.from_hf({"position_embedding_type": "relative_key"})
