"""Frozen pretrained text encoders (CLIP, T5, MiniLM) for text-conditioned diffusion."""

from models.text_encoders.encoder import (
    ENCODERS,
    TextEmbeddings,
    TextEncoder,
    default_path,
    load_text_encoder,
    text_widths,
)

__all__ = [
    "ENCODERS",
    "TextEmbeddings",
    "TextEncoder",
    "default_path",
    "load_text_encoder",
    "text_widths",
]
