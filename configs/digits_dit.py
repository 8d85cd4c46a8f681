"""A class-conditional DiT on the embedded digits (CPU-sized; the paper's blocks, fewer of them).

Patch 2 turns the 8x8 digit into 16 tokens; adaLN-Zero blocks read the timestep plus the class
(10% dropped to the learned null class, so classifier-free guidance works at sampling).
Run: python main.py --config=configs/digits_dit.py --workdir=runs/digits_dit
"""

import ml_collections

from configs import default, digits_ddpm


def get_config() -> ml_collections.ConfigDict:
    """DiT-S's architecture cut to 6 blocks of width 128 (4 heads), class-conditional."""
    config = digits_ddpm.get_config()
    config.model = default.dit_model()
    config.model.size = "S"
    config.model.depth = 6  # overrides of DiT-S (12 blocks, 384 wide, 6 heads) for a CPU
    config.model.hidden_size = 128
    config.model.num_heads = 4
    config.model.patch_size = 2

    config.optimizer.learning_rate = 5e-4

    config.conditioning.kind = "class"
    config.conditioning.dropout = 0.1
    config.sampler.num_samples = 8  # per class
    config.sampler.guidance_scale = 2.0
    return config
