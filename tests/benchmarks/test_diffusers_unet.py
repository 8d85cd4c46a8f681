"""benchmarks/diffusers_unet.py: vs_pytorch.py compares like with like: diffusers' UNet2DModel
built from our config is our U-Net, parameter for parameter (test-only deps: torch, diffusers)."""

import ml_collections
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from benchmarks import diffusers_unet, vs_pytorch  # noqa: E402
from models.functional import functionalize  # noqa: E402
from models.unet import UNet  # noqa: E402


def _tiny(**model) -> ml_collections.ConfigDict:
    config = vs_pytorch.bench_config(batch=2, sample_steps=2)
    config.model.base_channels = 16
    config.model.channel_mult = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.num_groups = 8
    config.model.update(model)
    return config


def _sizes(config: ml_collections.ConfigDict) -> tuple[list[int], list[int]]:
    """Sorted parameter sizes of our network and of the diffusers one for the same config."""
    model = diffusers_unet.unet_config(config)
    abstract = functionalize(lambda rngs: UNet(model, rngs=rngs)).abstract_params
    ours = sorted(int(np.prod(leaf.shape)) for leaf in _leaves(abstract))
    theirs = sorted(p.numel() for p in diffusers_unet.diffusers_unet(model).parameters())
    return ours, theirs


def _leaves(tree):
    for value in tree.values():
        yield from _leaves(value) if isinstance(value, dict) else [value]


@pytest.mark.parametrize(
    "model",
    [
        dict(attention_resolutions=(16,)),  # the CIFAR layout: attention at the second level
        dict(attention_resolutions=(32, 8), num_heads=2, channel_mult=(1, 1, 1)),  # heads > 1
    ],
)
def test_diffusers_unet_has_our_parameters(model):
    config = _tiny(**model)
    ours, theirs = _sizes(config)
    # Same total, and the same tensor sizes one for one: the same layers, not a lucky sum.
    assert sum(ours) == sum(theirs) == diffusers_unet.our_param_count(config)
    assert ours == theirs


def test_heads_are_matched_too():
    config = _tiny(attention_resolutions=(32, 8), num_heads=2, channel_mult=(1, 1, 1))
    unet = diffusers_unet.diffusers_unet(diffusers_unet.unet_config(config))
    heads = {m.heads for name, m in unet.named_modules() if name.endswith("attentions.0")}
    assert heads == {2}


def test_first_level_wider_than_base_is_refused():
    config = _tiny(channel_mult=(2, 2, 2))
    with pytest.raises(ValueError, match="channel_mult"):
        diffusers_unet.diffusers_unet_config(diffusers_unet.unet_config(config))


def test_time_embedding_mapping_matches_ours():
    import torch  # noqa: PLC0415

    from models.layers import timestep_embedding  # noqa: PLC0415

    config = _tiny(attention_resolutions=(16,))
    unet = diffusers_unet.diffusers_unet(diffusers_unet.unet_config(config))
    t = np.array([0, 1, 17, 500, 999])
    theirs = unet.time_proj(torch.tensor(t)).numpy()
    # float32 angles up to ~1000 rad round differently; a wrong flip or shift is off by O(1).
    np.testing.assert_allclose(theirs, timestep_embedding(t, 16), atol=1e-4)
