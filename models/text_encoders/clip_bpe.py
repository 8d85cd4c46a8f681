"""CLIP's byte-level BPE tokenizer built from `vocab.json` + `merges.txt`.

Stable Diffusion pipelines ship their tokenizer as these two files (the `tokenizer/` folder of
SD 1.x / 2.x has no `tokenizer.json`). CLIP (Radford et al. 2021) lower-cases, collapses
whitespace, splits text into letter runs, single digits, punctuation runs and English
contractions, maps bytes to printable characters (as GPT-2 does) and marks the last piece of each
word with `</w>`; this builds the same pipeline with the `tokenizers` library.
"""

from __future__ import annotations

import tokenizers
from etils.epath import Path
from tokenizers import decoders, models, normalizers, pre_tokenizers

import paths

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
UNKNOWN_TOKEN = "<|endoftext|>"  # CLIP has no separate unknown token
WORD_END = "</w>"
# Contractions, letter runs, one digit at a time, and runs of anything else but whitespace.
_PIECES = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def has_bpe_files(directory: Path) -> bool:
    """True when `directory` holds both vocab.json and merges.txt."""
    return (directory / VOCAB_FILE).is_file() and (directory / MERGES_FILE).is_file()


def clip_tokenizer(directory: Path) -> tokenizers.Tokenizer:
    """CLIP's tokenizer from `directory`'s vocab.json and merges.txt (no post-processor: the
    caller adds `<|startoftext|> $A <|endoftext|>`)."""
    with (
        paths.local_file(directory / VOCAB_FILE) as vocab,
        paths.local_file(directory / MERGES_FILE) as merges,
    ):
        bpe = models.BPE.from_file(
            vocab,
            merges,
            unk_token=UNKNOWN_TOKEN,
            end_of_word_suffix=WORD_END,
            continuing_subword_prefix="",
            fuse_unk=False,
        )
    tokenizer = tokenizers.Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
            normalizers.Lowercase(),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(_PIECES), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    specials = [t for t in ("<|startoftext|>", "<|endoftext|>") if t in vocab]
    tokenizer.add_special_tokens(specials)
    return tokenizer
