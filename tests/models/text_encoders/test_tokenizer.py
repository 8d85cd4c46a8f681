"""Fixed-length tokenization: same ids as the Hugging Face tokenizers, specials, padding."""

import json

import numpy as np
import pytest
import transformers
from tokenizers.processors import TemplateProcessing

from models.text_encoders import bert, clip, t5
from models.text_encoders.tokenizer import TextTokenizer
from tests.models.text_encoders import checkpoints

LONG = "an astronaut riding a horse on the moon at night with neon lights and a dog"
TEXTS = ["A photo of a Cat.", LONG, ""]


def _save(tokenizer, directory):
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def _hf_ids(hf_tokenizer, texts, max_length):
    encoded = hf_tokenizer(texts, padding="max_length", truncation=True, max_length=max_length)
    return np.array(encoded["input_ids"]), np.array(encoded["attention_mask"]).astype(bool)


def test_bert_matches_hf_tokenizer(minilm_dir):
    ours = TextTokenizer(minilm_dir, 12, bert.FAMILY.special_tokens)
    input_ids, mask = ours(TEXTS)
    assert input_ids.dtype == np.int32 and mask.dtype == bool and input_ids.shape == (3, 12)
    expected_ids, expected_mask = _hf_ids(
        transformers.AutoTokenizer.from_pretrained(minilm_dir), TEXTS, 12
    )
    np.testing.assert_array_equal(input_ids, expected_ids)
    np.testing.assert_array_equal(mask, expected_mask)
    cls, sep, pad = (ours.token_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    assert list(input_ids[2]) == [cls, sep] + [pad] * 10
    assert input_ids[1, 0] == cls and input_ids[1, -1] == sep and mask[1].all()  # truncated


def test_clip_layout_matches_hf_fast_tokenizer(tmp_path):
    directory = _save(checkpoints.clip_tokenizer(), tmp_path)
    ours = TextTokenizer(directory, 10, clip.FAMILY.special_tokens)
    input_ids, mask = ours(TEXTS)
    bos, eos = (ours.token_id(t) for t in checkpoints.CLIP_SPECIALS)
    # <|startoftext|> a photo of a cat . <|endoftext|>, then <|endoftext|> padding
    assert list(mask[0]) == [True] * 8 + [False] * 2
    assert input_ids[0, 0] == bos and list(input_ids[0, 7:]) == [eos] * 3
    assert input_ids[1, 0] == bos and input_ids[1, -1] == eos and mask[1].all()  # truncated
    assert list(input_ids[2, :2]) == [bos, eos] and mask[2].sum() == 2
    reference = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(directory / "tokenizer.json"),
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    expected_ids, expected_mask = _hf_ids(reference, TEXTS, 10)
    np.testing.assert_array_equal(input_ids, expected_ids)
    np.testing.assert_array_equal(mask, expected_mask)


def test_t5_layout(tmp_path):
    directory = _save(checkpoints.t5_tokenizer(), tmp_path)
    ours = TextTokenizer(directory, 10, t5.FAMILY.special_tokens)
    input_ids, mask = ours(TEXTS)
    eos, pad = ours.token_id("</s>"), ours.token_id("<pad>")
    for row, row_mask in zip(input_ids, mask, strict=True):
        real = int(row_mask.sum())
        assert row_mask[:real].all() and not row_mask[real:].any()
        assert row[real - 1] == eos and (row[real:] == pad).all()
    assert mask[1].all() and input_ids[1, -1] == eos  # truncated, </s> kept
    assert list(input_ids[2, :2]) == [eos, pad]


@pytest.mark.parametrize("family", ["clip", "t5", "bert"])
def test_decode_inverts_encode(family, tmp_path, minilm_dir):
    if family == "bert":
        tokenizer = TextTokenizer(minilm_dir, 32, bert.FAMILY.special_tokens)
        texts, normalised = (
            ["A Photo of a CAT.", "Hello, world!"],
            ["a photo of a cat.", "hello, world!"],
        )
    else:
        built = checkpoints.clip_tokenizer() if family == "clip" else checkpoints.t5_tokenizer()
        specials = (clip if family == "clip" else t5).FAMILY.special_tokens
        tokenizer = TextTokenizer(_save(built, tmp_path), 32, specials)
        texts = normalised = ["a photo of a cat", "a dog running in the park at sunset"]
    assert tokenizer.decode(tokenizer(texts)[0]) == normalised


def test_adds_missing_post_processor(tmp_path):
    directory = _save(checkpoints.clip_tokenizer(template=False), tmp_path)
    tokenizer = TextTokenizer(directory, 8, clip.FAMILY.special_tokens)
    input_ids, mask = tokenizer(["a cat"])
    bos, eos = (tokenizer.token_id(t) for t in checkpoints.CLIP_SPECIALS)
    assert input_ids[0, 0] == bos and input_ids[0, int(mask.sum()) - 1] == eos


def test_rejects_post_processor_without_specials(tmp_path):
    built = checkpoints.clip_tokenizer()
    built.post_processor = TemplateProcessing(single="$A", special_tokens=[])
    with pytest.raises(ValueError, match="post-processor"):
        TextTokenizer(_save(built, tmp_path), 8, clip.FAMILY.special_tokens)


def test_pad_token_from_tokenizer_config(tmp_path):
    """OpenCLIP-converted tokenizers (SD 2, SDXL's second encoder) pad with '!'."""
    directory = _save(checkpoints.clip_tokenizer(), tmp_path)
    (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": "!"}))
    tokenizer = TextTokenizer(directory, 8, clip.FAMILY.special_tokens)
    input_ids, mask = tokenizer(["a cat"])
    assert tokenizer.pad_id == tokenizer.token_id("!")
    assert (input_ids[0][~mask[0]] == tokenizer.pad_id).all()


def test_rejects_bad_arguments(tmp_path):
    directory = _save(checkpoints.clip_tokenizer(), tmp_path)
    with pytest.raises(ValueError, match="max_length"):
        TextTokenizer(directory, 2, clip.FAMILY.special_tokens)
    with pytest.raises(TypeError, match="sequence of texts"):
        TextTokenizer(directory, 8, clip.FAMILY.special_tokens)("a cat")
