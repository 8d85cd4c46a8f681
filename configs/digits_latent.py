"""Stage 2 of latent diffusion on the embedded digits: text-to-image on an autoencoder's latents.

digits_text_unet's U-Net (MiniLM cross-attention, classifier-free guidance) trained on the 8x8x4
latents of configs/digits_vae.py's autoencoder instead of pixels: each 16x16 batch is encoded
inside the train step (a fresh posterior sample each step) and every sample chain ends with the
frozen decoder, so grids, .npz samples and evaluation see 16x16 pixels.
Run:    python main.py --config=configs/digits_vae.py --workdir=runs/digits_vae
        python main.py --config=configs/digits_latent.py --workdir=runs/digits_latent \\
            --config.autoencoder.path=runs/digits_vae/autoencoder
"""

import ml_collections

from configs import digits_text_unet


def get_config() -> ml_collections.ConfigDict:
    """digits_text_unet on 8x8x4 latents of 16x16 digits."""
    config = digits_text_unet.get_config()
    config.num_train_steps = 3000
    config.sample_every_steps = 3000  # one grid at the end
    config.data.image_size = 16
    config.autoencoder.path = "runs/digits_vae/autoencoder"
    config.autoencoder.sample_posterior = True
    config.sampler.thresholding = "none"  # latents are not bounded to [-1, 1]
    return config
