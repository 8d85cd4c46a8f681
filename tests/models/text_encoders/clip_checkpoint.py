"""A tiny random CLIPModel directory (text and vision towers), for the CLIP vision and CLIP
score tests."""

from __future__ import annotations

import json
from pathlib import Path

from tests.models.text_encoders import checkpoints

# Image tower wider than the text tower (48 vs 32), so a mixed-up projection cannot load.
VISION = dict(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)
PROJECTION_DIM = 16
# Not CLIP's defaults, so a test sees whether preprocessor_config.json is read.
IMAGE_MEAN = (0.5, 0.4, 0.3)
IMAGE_STD = (0.2, 0.25, 0.3)


def clip_model_checkpoint(directory: Path):
    """(directory, torch CLIPModel): a 2+2-layer CLIPModel with every parameter perturbed
    (logit_scale too), its CLIP-style tokenizer.json and a preprocessor_config.json with
    IMAGE_MEAN / IMAGE_STD."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    tokenizer = checkpoints.clip_tokenizer()
    bos, eos = (tokenizer.token_to_id(t) for t in checkpoints.CLIP_SPECIALS)
    text = dict(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=checkpoints.MAX_POSITIONS,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    config = transformers.CLIPConfig(
        text_config=text, vision_config=VISION, projection_dim=PROJECTION_DIM
    )
    torch.manual_seed(0)
    model = checkpoints._perturb(transformers.CLIPModel(config), seed=4)
    checkpoints._save(model, tokenizer, directory)
    preprocessor = {"image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD)}
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return directory, model
