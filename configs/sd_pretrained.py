"""A local Stable Diffusion 1.x / 2.x pipeline (diffusers format): sample it, or fine-tune it.

Everything the pipeline fixes (U-Net architecture, VAE, CLIP and tokenizer, noise schedule,
prediction type, scheduler settings, image size) is read from --config.pretrained.path
(training/pretrained.py); this file holds only the choices: sampler, guidance, prompts, and the
fine-tuning recipe (on the embedded captioned digits as grey RGB, for a smoke run; use
data.name='tfds' with data.text_key for real captions).
Sample:    python main.py --mode=sample --config=configs/sd_pretrained.py --workdir=runs/sd \\
             --config.pretrained.path=checkpoints/stable-diffusion-v1-5 \\
             "--config.sampler.prompts=a watercolour of a lighthouse;a red bicycle" \\
             --config.sampler.negative_prompt=blurry --config.sampler.guidance_scale=7.5
Fine-tune: python main.py --config=configs/sd_pretrained.py --workdir=runs/sd_ft \\
             --config.pretrained.path=checkpoints/stable-diffusion-v1-5
Export:    python main.py --mode=export --config=configs/sd_pretrained.py --workdir=runs/sd_ft \\
             --config.pretrained.path=checkpoints/stable-diffusion-v1-5 \\
             --config.export.path=runs/sd_ft/diffusers
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Stable Diffusion from a pipeline directory; DDIM 50 steps at guidance 7.5."""
    config = default.get_config()
    config.pretrained.path = "checkpoints/stable-diffusion-v1-5"
    config.pretrained.scheduler_settings = True  # spacing, steps_offset, final alpha from the file

    config.data.name = "digits"  # captioned digits, grey RGB, enlarged to the pipeline's size
    config.data.split = "train"
    config.conditioning.dropout = 0.1  # keeps the empty prompt trained for guidance
    config.batch_size = 8
    config.num_train_steps = 1000
    config.log_every_steps = 10
    config.checkpoint_every_steps = 250
    config.sample_every_steps = 0  # a 50-step SD chain per grid is costly; sample with --mode
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-5
    config.optimizer.warmup_steps = 100
    config.optimizer.weight_decay = 0.01
    config.optimizer.ema_decay = 0.999
    config.model.remat = True  # the 860M U-Net's activations at 64x64 latents
    config.autoencoder.decode_chunk = 1  # the SD decoder at 512 px, one image per device at once

    config.sampler.name = "ddim"
    config.sampler.num_steps = 50
    config.sampler.max_steps = 100  # step counts up to 100 share one compile
    config.sampler.eta = 0.0
    config.sampler.num_samples = 2  # per prompt
    config.sampler.guidance_scale = 7.5
    config.sampler.prompts = "a photograph of an astronaut riding a horse"
    config.sampler.negative_prompt = ""
    return config
