"""The embedded default: DDPM on scikit-learn's 8x8 digits (1797 images, no download).

Sized to train in under 10 minutes on a 2-core CPU to samples that read as digits.
Run: python main.py --config=configs/digits_ddpm.py --workdir=runs/digits_ddpm
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """A small U-Net (8x8 -> 4x4, attention at 4x4), eps-prediction, linear betas, DDIM samples."""
    config = default.get_config()
    config.num_train_steps = 4000
    config.batch_size = 64
    config.log_every_steps = 100
    config.checkpoint_every_steps = 1000
    config.sample_every_steps = 1000
    config.max_checkpoints_to_keep = 2

    config.data.name = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    config.data.random_flip = False  # digits are not mirror-symmetric

    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.diffusion.prediction = "eps"

    config.model.base_channels = 32
    config.model.channel_mult = (1, 2)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (4,)
    config.model.num_heads = 2
    config.model.dropout = 0.0
    config.model.num_groups = 8

    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 200
    config.optimizer.ema_decay = 0.995

    config.sampler.name = "ddim"
    config.sampler.num_steps = 100
    config.sampler.eta = 0.0
    config.sampler.num_samples = 64

    # Digits FID (the digits feature network) on 1000 samples against all 1797 digits.
    config.eval.num_samples = 1000
    config.eval.in_loop_num_samples = 1000
    config.eval.batch_size = 1000
    return config
