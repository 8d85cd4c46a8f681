"""Text-conditioned CIFAR-10: a CLIP-conditioned U-Net on "a photo of a {label}" captions.

CLIP's text transformer (e.g. openai/clip-vit-base-patch32's text half, 512-d) is loaded from a
local Hugging Face directory (config.json, model.safetensors, tokenizer.json): set its path.
Needs the prepared tfds `cifar10` (see README.md).
Run: python main.py --config=configs/cifar_text.py --workdir=/tmp/cifar_text \\
       --config.text_encoder.path=/path/to/clip-vit-base-patch32
"""

import ml_collections

from configs import cifar_ddpm


def get_config() -> ml_collections.ConfigDict:
    """Ho et al.'s CIFAR U-Net with SD transformer blocks at 16x16 and 8x8, CFG-trained."""
    config = cifar_ddpm.get_config()
    config.num_train_steps = 400_000
    config.model.attention_resolutions = (16, 8)
    config.model.num_heads = 4

    config.conditioning.kind = "text"
    config.conditioning.dropout = 0.1
    config.text_encoder.name = "clip"
    config.text_encoder.path = "/path/to/clip-vit-base-patch32"
    config.text_encoder.max_length = 16

    config.sampler.name = "dpmpp_2m"
    config.sampler.num_steps = 25
    config.sampler.num_samples = 8  # per prompt: the ten "a photo of a {label}" captions
    config.sampler.guidance_scale = 3.0
    return config
