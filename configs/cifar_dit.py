"""Class-conditional DiT-S/2 on CIFAR-10 (pixel space, 32x32x3 -> 256 tokens).

Peebles & Xie's recipe (AdamW 1e-4, no weight decay, batch 256, EMA 0.9999, 10% class dropout
for guidance) on CIFAR pixels instead of SD-VAE latents. Needs the prepared tfds `cifar10`.
Run: python main.py --config=configs/cifar_dit.py --workdir=/tmp/cifar_dit
"""

import ml_collections

from configs import cifar_ddpm, default


def get_config() -> ml_collections.ConfigDict:
    """DiT-S/2, 12 blocks of width 384, sin-cos positions, class-conditional with CFG."""
    config = cifar_ddpm.get_config()
    config.num_train_steps = 400_000
    config.batch_size = 256

    config.model = default.dit_model()
    config.model.size = "S"  # or "B" for DiT-B/2
    config.model.patch_size = 2

    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = 0
    config.optimizer.ema_decay = 0.9999
    config.optimizer.ema_warmup = False  # DiT's plain EMA, 0.9999 from step 0

    config.conditioning.kind = "class"
    config.conditioning.dropout = 0.1
    config.sampler.name = "dpmpp_2m"
    config.sampler.num_steps = 25
    config.sampler.num_samples = 8  # per class
    config.sampler.guidance_scale = 1.5
    return config
