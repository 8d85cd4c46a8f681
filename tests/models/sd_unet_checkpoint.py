"""Tiny diffusers UNet2DConditionModels with every parameter perturbed: the reference of the
Stable Diffusion U-Net tests."""

import torch
from diffusers import UNet2DConditionModel

# SD 1.x's layout: cross-attention on every level but the last, one head count everywhere,
# 1x1-conv transformer projections.
SD1_TINY = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=[32, 64],
    layers_per_block=1,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=8,
)
# SD 2.x's: heads per level (head width 16 here, 64 in SD 2.x), linear projections, another
# text width; three levels and two resnets per level.
SD2_TINY = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=[32, 64, 64],
    layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    norm_num_groups=8,
    cross_attention_dim=24,
    attention_head_dim=[2, 4, 4],
    use_linear_projection=True,
    upcast_attention=True,
)


def torch_unet(config: dict) -> UNet2DConditionModel:
    """A diffusers UNet2DConditionModel of `config` with every parameter, norms and
    zero-initialised ones too, moved by 0.1 * randn (seed 0), in eval mode."""
    torch.manual_seed(0)
    model = UNet2DConditionModel(**config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def full_size(config: dict) -> UNet2DConditionModel:
    """A diffusers UNet2DConditionModel of `config` on torch's meta device (shapes, no data)."""
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


_SD_LEVELS = dict(
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    layers_per_block=2,
    norm_num_groups=32,
    norm_eps=1e-05,
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
    mid_block_scale_factor=1,
    center_input_sample=False,
    act_fn="silu",
    in_channels=4,
    out_channels=4,
)
# unet/config.json of Stable Diffusion 1.5 and 2.1 (768 px, v-prediction).
SD15_CONFIG = dict(
    _class_name="UNet2DConditionModel",
    _diffusers_version="0.6.0",
    sample_size=64,
    cross_attention_dim=768,
    attention_head_dim=8,
    **_SD_LEVELS,
)
SD21_CONFIG = dict(
    _class_name="UNet2DConditionModel",
    _diffusers_version="0.10.0.dev0",
    sample_size=96,
    cross_attention_dim=1024,
    attention_head_dim=[5, 10, 20, 20],
    use_linear_projection=True,
    upcast_attention=True,
    dual_cross_attention=False,
    num_class_embeds=None,
    only_cross_attention=False,
    **_SD_LEVELS,
)
