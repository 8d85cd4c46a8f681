"""CLIP's tokenizer from vocab.json + merges.txt (a Stable Diffusion pipeline's tokenizer/) against
transformers' CLIPTokenizer reading the same two files."""

import json

import numpy as np
import pytest
import transformers

from models.text_encoders import clip, clip_bpe, load_text_encoder
from models.text_encoders.tokenizer import TextTokenizer
from tests.models.text_encoders import checkpoints

PROMPTS = [
    "a photo of a cat",
    "A  Painting\tof a DOG, running in the park!",
    "what's that? 2 cats and 13 dogs...",
    "an astronaut riding a horse on the moon at sunset with big waves",  # truncated
    "",
]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return checkpoints.clip_bpe_files(tmp_path_factory.mktemp("clip_bpe"))


def _reference_ids(tokenizer, texts, length):
    encoded = tokenizer(
        texts, padding="max_length", truncation=True, max_length=length, return_tensors="np"
    )
    return encoded["input_ids"], encoded["attention_mask"].astype(bool)


def test_ids_equal_transformers_clip_tokenizer(bpe_dir):
    ours = TextTokenizer(
        bpe_dir, 12, clip.FAMILY.special_tokens, from_bpe_files=clip_bpe.clip_tokenizer
    )
    reference = transformers.CLIPTokenizer.from_pretrained(str(bpe_dir))
    input_ids, mask = ours(PROMPTS)
    expected_ids, expected_mask = _reference_ids(reference, PROMPTS, 12)
    np.testing.assert_array_equal(input_ids, expected_ids)
    np.testing.assert_array_equal(mask, expected_mask)
    assert (input_ids[:, 1:-1] < len(json.loads((bpe_dir / "vocab.json").read_text()))).all()
    # Real merges happened: "photo" is fewer tokens than letters.
    assert mask[0].sum() < len("a photo of a cat".replace(" ", "")) + 2


def test_a_directory_without_tokenizer_files_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer.json or vocab.json \+ merges.txt"):
        TextTokenizer(
            tmp_path, 12, clip.FAMILY.special_tokens, from_bpe_files=clip_bpe.clip_tokenizer
        )


def test_a_text_encoder_reads_its_tokenizer_from_another_directory(bpe_dir, tmp_path):
    """A diffusers pipeline's layout: text_encoder/ (config + weights) beside tokenizer/
    (vocab.json + merges.txt); embeddings equal transformers' CLIPTextModel on its own ids."""
    torch_model = checkpoints.clip_text_model(
        vocab_size=len(json.loads((bpe_dir / clip_bpe.VOCAB_FILE).read_text()))
    )
    encoder_dir = tmp_path / "text_encoder"
    torch_model.save_pretrained(encoder_dir, safe_serialization=True)
    encoder = load_text_encoder("clip", encoder_dir, 12, tokenizer_path=bpe_dir)
    embeddings = encoder.encode(PROMPTS)
    reference = transformers.CLIPTokenizer.from_pretrained(str(bpe_dir))
    ids, mask = _reference_ids(reference, PROMPTS, 12)
    hidden, _ = checkpoints.torch_outputs(torch_model, ids, mask)
    assert checkpoints.max_error(embeddings.tokens, hidden) < 1e-4
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_text_encoder("clip", encoder_dir, 12)  # no tokenizer beside the weights
