"""Our U-Net config as diffusers' `UNet2DModel` arguments: the PyTorch side of
benchmarks/vs_pytorch.py (tests/benchmarks/test_vs_pytorch.py checks the two networks have the
same parameters, tensor by tensor)."""

from __future__ import annotations

import jax
import ml_collections

from models import registry
from models.functional import count_params
from models.unet import UNetConfig
from training.experiment import build_experiment


def unet_config(config: ml_collections.ConfigDict) -> UNetConfig:
    """The typed U-Net config `build_experiment` makes from `config` (unconditional)."""
    return registry.make_model_config(
        config.model, image_size=config.data.image_size, channels=config.data.channels
    )


def diffusers_unet_config(model: UNetConfig) -> dict:
    """`UNet2DModel(**kwargs)` arguments for the same network as our `UNet(model)`.

    Ours embeds t with `base` sinusoids [sin | cos] at frequencies exp(-ln(1e4) i / (half - 1))
    (flip_sin_to_cos=False, freq_shift=1), uses GroupNorm eps 1e-6, and its conv_in and time
    MLP have `base` channels, which diffusers ties to block_out_channels[0]: so channel_mult[0]
    must be 1. Head counts do not change parameter counts, but are matched too: diffusers takes
    one attention_head_dim for every attention layer (None: one head of the block's width).
    """
    if model.channel_mult[0] != 1:
        raise ValueError(f"channel_mult[0]={model.channel_mult[0]}: diffusers needs 1 (see doc).")
    if model.num_classes or model.context_dim or model.pooled_dim:
        raise ValueError("Only unconditional U-Nets map to UNet2DModel.")
    channels = tuple(model.base_channels * m for m in model.channel_mult)
    attn = [r in model.attention_resolutions for r in model.resolutions]
    head_dim = None
    if model.num_heads > 1:
        widths = {c for c, a in zip(channels, attn, strict=True) if a} | {channels[-1]}
        if len(widths) > 1:
            raise ValueError(f"num_heads={model.num_heads} over widths {sorted(widths)}.")
        head_dim = widths.pop() // model.num_heads
    return dict(
        sample_size=model.image_size,
        in_channels=model.in_channels,
        out_channels=model.out_channels,
        time_embedding_type="positional",
        flip_sin_to_cos=False,
        freq_shift=1,
        block_out_channels=channels,
        layers_per_block=model.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        mid_block_type="UNetMidBlock2D",
        add_attention=True,
        attention_head_dim=head_dim,
        norm_num_groups=model.num_groups,
        norm_eps=1e-6,
        act_fn="silu",
        dropout=model.dropout,
        downsample_padding=1,
        resnet_time_scale_shift="default",
    )


def diffusers_unet(model: UNetConfig):
    """diffusers' UNet2DModel built by `diffusers_unet_config` (PyTorch default init)."""
    from diffusers import UNet2DModel  # noqa: PLC0415 (test-only dependency)

    return UNet2DModel(**diffusers_unet_config(model))


def torch_param_count(unet) -> int:
    return sum(p.numel() for p in unet.parameters())


def our_param_count(config: ml_collections.ConfigDict) -> int:
    """Parameters of our network for `config` (shapes only, nothing allocated)."""
    experiment = build_experiment(config, jax.devices()[:1])
    return count_params(experiment.model.abstract_params)
