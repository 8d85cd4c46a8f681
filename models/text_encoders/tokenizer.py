"""Fixed-length tokenization with a Hugging Face `tokenizer.json` (the `tokenizers` library).

Each sequence is `[bos] tokens [eos]` right-padded to `max_length`; longer texts are cut on
the right before the special tokens are added, so `eos` always survives (as the Hugging Face
fast tokenizers do with `truncation=True, padding="max_length"`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tokenizers
from etils.epath import Path
from tokenizers.processors import TemplateProcessing

import paths
from models.text_encoders import clip_bpe
from models.text_encoders.weights import TOKENIZER_FILE

# Files of a Hugging Face tokenizer directory that may name the padding token.
_TOKEN_MAP_FILES = ("tokenizer_config.json", "special_tokens_map.json")


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """The special tokens a model family expects around each sequence."""

    bos: str | None  # prepended: CLIP <|startoftext|>, BERT [CLS], T5 none
    eos: str  # appended: CLIP <|endoftext|>, BERT [SEP], T5 </s>
    pad: str  # padding when neither the tokenizer files nor the config name one


class TextTokenizer:
    """Texts -> (input_ids int32 [B, L], attention_mask bool [B, L]) with L = max_length."""

    def __init__(
        self,
        directory: str | Path,
        max_length: int,
        specials: SpecialTokens,
        *,
        config_pad_id: int | None = None,
        from_bpe_files: Callable[[Path], tokenizers.Tokenizer] | None = None,
    ):
        directory = Path(directory)
        num_specials = 1 + (specials.bos is not None)
        if max_length <= num_specials:
            raise ValueError(
                f"text_encoder.max_length must leave room for text after the {num_specials} "
                f"special tokens, got {max_length}."
            )
        self.max_length = max_length
        self._tokenizer = read_tokenizer(directory, from_bpe_files)
        self.pad_id, pad_token = _padding(directory, self._tokenizer, specials, config_pad_id)
        # tokenizer.json may carry its own padding / truncation settings: ours replace them.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._check_post_processor(specials)
        self._tokenizer.enable_truncation(max_length, direction="right")
        self._tokenizer.enable_padding(
            direction="right", pad_id=self.pad_id, pad_token=pad_token, length=max_length
        )

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added special tokens included."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        """The id of one token string, or ValueError if it is not in the vocabulary."""
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"Token {token!r} is not in the tokenizer vocabulary.")
        return token_id

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids int32 [B, L] and mask bool [B, L] (True on real and special tokens)."""
        if isinstance(texts, str):
            raise TypeError("Pass a sequence of texts, not one string.")
        encodings = self._tokenizer.encode_batch(list(texts))
        input_ids = np.array([e.ids for e in encodings], dtype=np.int32).reshape(
            -1, self.max_length
        )
        mask = np.array([e.attention_mask for e in encodings], dtype=bool).reshape(input_ids.shape)
        return input_ids, mask

    def decode(self, input_ids: np.ndarray) -> list[str]:
        """Texts of token ids [B, L], special and padding tokens dropped."""
        return self._tokenizer.decode_batch(
            np.asarray(input_ids).tolist(), skip_special_tokens=True
        )

    def _check_post_processor(self, specials: SpecialTokens) -> None:
        """Adds `bos $A eos` when tokenizer.json has no post-processor; checks it otherwise."""
        bos = [] if specials.bos is None else [specials.bos]
        prefix = [self.token_id(token) for token in bos]
        suffix = [self.token_id(specials.eos)]
        if self._tokenizer.post_processor is None:
            self._tokenizer.post_processor = TemplateProcessing(
                single=" ".join([*bos, "$A", specials.eos]),
                special_tokens=[(token, self.token_id(token)) for token in [*bos, specials.eos]],
            )
        probe = self._tokenizer.encode("a").ids
        if probe[: len(prefix)] != prefix or probe[-1:] != suffix:
            raise ValueError(
                f"tokenizer.json's post-processor gives {probe} for 'a'; expected it to start "
                f"with {specials.bos!r} {prefix} and end with {specials.eos!r} {suffix}."
            )


def read_tokenizer(
    directory: Path, from_bpe_files: Callable[[Path], tokenizers.Tokenizer] | None = None
) -> tokenizers.Tokenizer:
    """tokenizer.json, or (families that can) a tokenizer built from vocab.json + merges.txt."""
    if (directory / TOKENIZER_FILE).is_file():
        with paths.local_file(directory / TOKENIZER_FILE) as file:
            return tokenizers.Tokenizer.from_file(file)
    if from_bpe_files is not None and clip_bpe.has_bpe_files(directory):
        return from_bpe_files(directory)
    alternative = (
        f" or {clip_bpe.VOCAB_FILE} + {clip_bpe.MERGES_FILE}" if from_bpe_files is not None else ""
    )
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "nothing"
    raise FileNotFoundError(
        f"Tokenizer directory {str(directory)!r} has no {TOKENIZER_FILE}{alternative}; "
        f"found {found}."
    )


def _padding(
    directory: Path,
    tokenizer: tokenizers.Tokenizer,
    specials: SpecialTokens,
    config_pad_id: int | None,
) -> tuple[int, str]:
    """(pad id, pad token): tokenizer.json, then tokenizer_config / special_tokens_map, then the
    family default, then config.json's pad_token_id (CLIP configs often carry a stale one)."""
    if tokenizer.padding is not None:
        return tokenizer.padding["pad_id"], tokenizer.padding["pad_token"]
    for name in _TOKEN_MAP_FILES:
        token = _pad_token_in(directory / name)
        if token is not None and tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token), token
    if tokenizer.token_to_id(specials.pad) is not None:
        return tokenizer.token_to_id(specials.pad), specials.pad
    if config_pad_id is not None and tokenizer.id_to_token(config_pad_id) is not None:
        return config_pad_id, tokenizer.id_to_token(config_pad_id)
    raise ValueError(
        f"No padding token found for {str(directory)!r}: not in tokenizer.json, "
        f"{' or '.join(_TOKEN_MAP_FILES)}, nor {specials.pad!r} in the vocabulary."
    )


def _pad_token_in(path: Path) -> str | None:
    if not path.is_file():
        return None
    token: Any = json.loads(path.read_text()).get("pad_token")
    if isinstance(token, dict):  # {"content": "<pad>", "lstrip": false, ...}
        token = token.get("content")
    return token if isinstance(token, str) else None
