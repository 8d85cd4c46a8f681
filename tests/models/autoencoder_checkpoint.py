"""A tiny diffusers AutoencoderKL with every parameter perturbed: the reference of the VAE tests."""

import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL

TINY = dict(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, sample_size=16)


def torch_vae(**config) -> TorchAutoencoderKL:
    """A diffusers AutoencoderKL (TINY updated by `config`) with every parameter, zero-initialised
    ones too, moved by 0.1 * randn (seed 0), in eval mode."""
    config = {**TINY, **config}
    levels = len(config["block_out_channels"])
    torch.manual_seed(0)
    model = TorchAutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        **config,
    ).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model
