"""Class-conditional DiT-XL/2 on ImageNet 256x256 through Stable Diffusion's VAE (the DiT paper).

Peebles & Xie (2023): 256x256 images -> 32x32x4 latents of the frozen SD VAE (sd-vae-ft-ema,
scaling factor 0.18215, a fresh posterior sample per image per step) -> DiT-XL/2 (28 blocks,
width 1152, 256 tokens), linear betas over 1000 steps, eps-prediction, AdamW 1e-4 without weight
decay or warm-up, batch 256, EMA 0.9999, 10% class dropout for guidance, random flips.
Sized for a TPU pod slice or a GPU node; nothing here runs on the CPU machine beyond a compile.

Needs the prepared tfds `imagenet2012` (manual download) under data.data_dir, and the VAE in
diffusers format at autoencoder.path; on a machine with internet:
    huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir checkpoints/sd-vae-ft-ema
Run:    python main.py --config=configs/imagenet_latent_dit.py --workdir=gs://bucket/dit_xl2 \\
            --config.data.data_dir=/path/to/tensorflow_datasets
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """DiT-XL/2 on SD-VAE latents of ImageNet 256, the paper's recipe."""
    config = default.get_config()
    config.num_train_steps = 400_000  # the paper's Table 4 point (FID-50K 19.5 without guidance)
    config.batch_size = 256
    config.log_every_steps = 100
    config.checkpoint_every_steps = 5000
    config.sample_every_steps = 20_000
    config.eval_every_steps = 50_000  # in-loop FID on eval.in_loop_num_samples samples

    config.data.name = "tfds"
    config.data.tfds_name = "imagenet2012"
    config.data.image_key = "image"  # centre-cropped and resized to 256 (ADM's preprocessing)
    config.data.label_key = "label"
    config.data.num_classes = 1000
    config.data.image_size = 256
    config.data.channels = 3
    config.data.random_flip = True
    config.data.split = "train"

    config.autoencoder.path = "checkpoints/sd-vae-ft-ema"
    config.autoencoder.sample_posterior = True
    config.autoencoder.decode_chunk = 8  # 256x256 decoder activations: 8 images per device

    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.diffusion.prediction = "eps"

    config.model = default.dit_model()
    config.model.size = "XL"
    config.model.patch_size = 2  # 32x32 latents -> 256 tokens
    config.model.dtype = "bfloat16"  # params and optimizer state stay float32

    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = 0
    config.optimizer.ema_decay = 0.9999
    config.optimizer.ema_warmup = False  # DiT's plain EMA, 0.9999 from step 0

    config.conditioning.kind = "class"
    config.conditioning.dropout = 0.1

    config.sampler.name = "ddpm"
    config.sampler.num_steps = 250  # the paper samples with 250 DDPM steps
    config.sampler.num_samples = 4  # per class in the training-time grids
    config.sampler.class_labels = "88,207,279,360,387,388,417,979"  # the paper's figure classes
    config.sampler.guidance_scale = 4.0  # for pictures; FID uses 1.5 (--config.sampler...)
    config.sampler.thresholding = "none"  # latents are not bounded to [-1, 1]

    config.eval.num_samples = 50_000
    config.eval.in_loop_num_samples = 10_000
    config.eval.batch_size = 256
    return config
