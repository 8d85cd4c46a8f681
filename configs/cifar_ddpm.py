"""Ho et al. 2020's CIFAR-10 DDPM (35.7M-parameter U-Net, eps-prediction, 800k steps).

Needs the prepared tfds `cifar10` under `data.data_dir` (see README.md).
Run: python main.py --config=configs/cifar_ddpm.py --workdir=/tmp/cifar_ddpm
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Paper settings (Appendix B): batch 128, Adam 2e-4, 5000 warmup steps, EMA 0.9999."""
    config = default.get_config()
    config.num_train_steps = 800_000
    config.batch_size = 128
    config.log_every_steps = 100
    config.checkpoint_every_steps = 10_000
    config.sample_every_steps = 10_000

    config.data.name = "cifar10"
    config.data.image_size = 32
    config.data.channels = 3
    config.data.random_flip = True

    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.diffusion.beta_start = 1e-4
    config.diffusion.beta_end = 0.02
    config.diffusion.prediction = "eps"

    config.model.name = "unet"
    config.model.base_channels = 128
    config.model.channel_mult = (1, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (16,)
    config.model.num_heads = 1
    config.model.dropout = 0.1
    config.model.num_groups = 32

    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 2e-4
    config.optimizer.warmup_steps = 5000
    config.optimizer.grad_clip_norm = 1.0
    config.optimizer.ema_decay = 0.9999
    config.optimizer.ema_warmup = False  # the paper's plain EMA, 0.9999 from step 0

    config.sampler.name = "ddpm"
    config.sampler.num_steps = 1000
    config.sampler.num_samples = 64

    # FID as Ho et al.: 50,000 samples against the 50,000 training images, FID Inception.
    config.eval.num_samples = 50_000
    config.eval.batch_size = 256  # the Inception pass runs on a whole chunk at 299x299
    return config
