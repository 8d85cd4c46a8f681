import pytest

from configs import digits_ddpm


@pytest.fixture
def tiny_config():
    """The digits config with a U-Net small enough to compile and step in seconds."""
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
    config.model.dropout = 0.1
    config.optimizer.warmup_steps = 0
    config.sampler.num_steps = 5
    config.sampler.num_samples = 16
    return config
