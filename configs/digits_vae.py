"""Stage 1 of latent diffusion on the embedded digits: a KL autoencoder, 16x16 pixels -> 8x8x4.

The digits are enlarged to 16x16 (pixel repetition) and a two-level autoencoder (factor 2)
encodes them to 8x8x4 latents, the grid the digits U-Nets already run on. Trained with the
per-pixel MSE plus a small KL term (training.kl_weight) on the digits' 'fit' split (80%); the
sample grids show held-out digits over their reconstructions, and reconstruction PSNR on the
held-out 20% is logged. At the end the EMA weights are exported, with a scaling factor estimated
from the data (1 / std of the latents), to <workdir>/autoencoder in diffusers format.
Run:    python main.py --config=configs/digits_vae.py --workdir=runs/digits_vae
Then:   configs/digits_latent.py with --config.autoencoder.path=runs/digits_vae/autoencoder
"""

import ml_collections

from configs import default, digits_ddpm


def get_config() -> ml_collections.ConfigDict:
    """digits_ddpm's data at 16x16 and schedule of steps, an autoencoder instead of a U-Net."""
    config = digits_ddpm.get_config()
    config.num_train_steps = 600  # held-out PSNR ~40 dB by step 500 (docs/PERFORMANCE.md)
    config.log_every_steps = 100
    config.checkpoint_every_steps = 300
    config.sample_every_steps = 300  # reconstruction grid and held-out PSNR

    config.data.image_size = 16
    config.data.split = "fit"  # the held-out 20% judge the reconstructions

    config.model = default.autoencoder_model()
    config.model.latent_channels = 4
    config.model.block_out_channels = (32, 64)  # two levels: downsampling factor 2
    config.model.layers_per_block = 1
    config.model.norm_num_groups = 8
    config.model.scaling_factor = 1.0  # replaced by the data's estimate at export
    config.training.kl_weight = 1e-4

    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.optimizer.ema_decay = 0.99
    config.sampler.num_samples = 16  # held-out digits shown (over their reconstructions)
    return config
