"""Tiny random Hugging Face checkpoints, built offline, as references for the parity tests.

Tokenizers are trained in memory with the `tokenizers` library in the style of each family
(CLIP: BPE with </w> word ends and `<|startoftext|> $A <|endoftext|>`; BERT: WordPiece with
`[CLS] $A [SEP]`; T5: Unigram with `$A </s>`). Models come from transformers' constructors with
every parameter perturbed, so biases and norm scales are not their trivial initial values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

CORPUS = [
    "a photo of a cat sitting on a red sofa",
    "a painting of a dog running in the park",
    "an astronaut riding a horse on the moon",
    "a bowl of fruit on a wooden table",
    "the quick brown fox jumps over the lazy dog",
    "a city street at night with neon lights",
    "two people walking along the beach at sunset",
    "a small boat in a storm with big waves",
    "a photo of a cat. a dog, a bird! what's that?",
]
ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'")
MAX_POSITIONS = 16  # CLIP and BERT position tables

CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def clip_tokenizer(template: bool = True) -> Tokenizer:
    """CLIP-style BPE; `template=False` leaves out the post-processor."""
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(CLIP_SPECIALS),
        initial_alphabet=ALPHABET,
        end_of_word_suffix="</w>",
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    if template:
        bos, eos = CLIP_SPECIALS
        tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A {eos}",
            special_tokens=[(bos, tokenizer.token_to_id(bos)), (eos, tokenizer.token_to_id(eos))],
        )
    return tokenizer


def bert_tokenizer() -> Tokenizer:
    """BERT-style uncased WordPiece with `[CLS] $A [SEP]`."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=list(BERT_SPECIALS), initial_alphabet=ALPHABET
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
    )
    return tokenizer


def t5_tokenizer() -> Tokenizer:
    """T5-style Unigram with Metaspace and `$A </s>`."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200,
        special_tokens=list(T5_SPECIALS),
        unk_token="<unk>",
        initial_alphabet=ALPHABET,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    return tokenizer


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _save(model: torch.nn.Module, tokenizer: Tokenizer, directory: Path) -> Path:
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def clip_checkpoint(
    directory: Path, *, hidden_act: str = "quick_gelu", legacy_eos: bool = False
) -> tuple[Path, torch.nn.Module]:
    """A 2-layer CLIPTextModel; `legacy_eos` writes eos_token_id=2 (argmax pooling)."""
    tokenizer = clip_tokenizer()
    bos, eos = (tokenizer.token_to_id(t) for t in CLIP_SPECIALS)
    config = transformers.CLIPTextConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        hidden_act=hidden_act,
        bos_token_id=bos,
        eos_token_id=2 if legacy_eos else eos,
        pad_token_id=eos,
    )
    torch.manual_seed(0)
    model = _perturb(transformers.CLIPTextModel(config), seed=1)
    return _save(model, tokenizer, directory), model


def clip_bpe_files(directory: Path) -> Path:
    """vocab.json + merges.txt of a byte-level BPE trained on CORPUS in CLIP's layout (every
    byte character alone and with </w>, then the merges, then the two special tokens): what a
    Stable Diffusion pipeline's tokenizer/ folder holds."""
    from models.text_encoders import clip_bpe  # noqa: PLC0415

    tokenizer = Tokenizer(models.BPE(end_of_word_suffix=clip_bpe.WORD_END))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=alphabet,
        end_of_word_suffix=clip_bpe.WORD_END,
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocab = [*alphabet, *(c + clip_bpe.WORD_END for c in alphabet)]
    for merge in merges:
        if merge.replace(" ", "") not in vocab:
            vocab.append(merge.replace(" ", ""))
    vocab += list(CLIP_SPECIALS)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / clip_bpe.VOCAB_FILE).write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / clip_bpe.MERGES_FILE).write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


def clip_text_model(vocab_size: int, hidden_size: int = 32, seed: int = 1):
    """A perturbed 2-layer CLIPTextModel whose special tokens are the last two ids (as in
    clip_bpe_files' vocabulary)."""
    config = transformers.CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    torch.manual_seed(0)
    return _perturb(transformers.CLIPTextModel(config), seed=seed)


def t5_checkpoint(directory: Path, *, feed_forward_proj: str) -> tuple[Path, torch.nn.Module]:
    """A 2-layer T5EncoderModel with inner attention width (heads * d_kv) != d_model."""
    tokenizer = t5_tokenizer()
    config = transformers.T5Config(
        vocab_size=tokenizer.get_vocab_size(),
        d_model=32,
        d_kv=6,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj=feed_forward_proj,
        pad_token_id=tokenizer.token_to_id("<pad>"),
        eos_token_id=tokenizer.token_to_id("</s>"),
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    model = _perturb(transformers.T5EncoderModel(config), seed=2)
    return _save(model, tokenizer, directory), model


def bert_checkpoint(directory: Path) -> tuple[Path, torch.nn.Module]:
    """A 2-layer BertModel."""
    tokenizer = bert_tokenizer()
    config = transformers.BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.token_to_id("[PAD]"),
    )
    torch.manual_seed(0)
    model = _perturb(transformers.BertModel(config), seed=3)
    return _save(model, tokenizer, directory), model


def torch_outputs(
    model: torch.nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """(last_hidden_state, pooler_output or None) of a transformers model on numpy inputs."""
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(np.asarray(input_ids, np.int64)),
            attention_mask=torch.from_numpy(np.asarray(attention_mask, np.int64)),
        )
    pooled = getattr(out, "pooler_output", None)
    return out.last_hidden_state.numpy(), None if pooled is None else pooled.numpy()


def max_error(actual, expected) -> float:
    """Max abs difference, relative to the reference's scale when it exceeds 1."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / max(1.0, np.max(np.abs(expected))))
