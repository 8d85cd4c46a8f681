"""The embedded default shrunk to compile and step in seconds: the tests' shared config.

Same data, schedule and sampler as digits_ddpm.py; a one-block, 16-channel U-Net, 4 steps.
A smoke test of a fresh install: python main.py --config=configs/digits_tiny.py --workdir=/tmp/t
"""

import ml_collections

from configs import digits_ddpm


def get_config() -> ml_collections.ConfigDict:
    """digits_ddpm with a U-Net of two levels, one ResBlock each, 16 base channels."""
    config = digits_ddpm.get_config()
    config.num_train_steps = 4
    config.batch_size = 16
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.sample_every_steps = 4
    config.model.base_channels = 16
    config.model.channel_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (4,)
    config.model.num_heads = 1
    config.model.num_groups = 8
    config.model.dropout = 0.1  # dropout on, so the per-step RNG matters in resume tests
    config.optimizer.warmup_steps = 0
    config.sampler.num_steps = 5
    config.sampler.num_samples = 16
    return config
