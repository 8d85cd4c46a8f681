"""The FID Inception against pytorch-fid's own network, with random weights made here.

pytorch-fid (imported through tests/evaluation/torch_references.py) builds its network with
`fid_inception_v3`, which downloads the real weights; the download is replaced by a seeded random
state dict (batch-norm statistics included), which pytorch-fid loads strictly, so torch itself
checks the tensor names and shapes. The state dict is saved with torch.save, converted by our
converter and loaded by `load_inception`.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation import inception, inception_weights
from tests.evaluation import torch_references

TOLERANCE = 1e-4  # max |ours - reference| relative to max |reference|


def _random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Random weights of the FID Inception's shapes, scaled so activations stay O(1)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = inception_weights.torch_shapes(inception.inception_model().abstract_params)
    state_dict = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith(("running_var", "bn.weight")):
            tensor = 0.5 + torch.rand(shape, generator=generator)  # positive
        elif name.endswith(("running_mean", "bias")):
            tensor = 0.1 * torch.randn(shape, generator=generator)
        else:  # conv and fc weights, He-scaled
            fan_in = int(np.prod(shape[1:]))
            tensor = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
        state_dict[name] = tensor
    return state_dict


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(pytorch-fid's pool network, fc weight, fc bias, our FeatureNetwork, .safetensors path)."""
    pytorch_fid_inception = torch_references.pytorch_fid_inception()
    state_dict = _random_state_dict(seed=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: dict(state_dict)
        )
        full = pytorch_fid_inception.fid_inception_v3().eval()
        pool_network = pytorch_fid_inception.InceptionV3(
            output_blocks=[3], resize_input=True, normalize_input=True, use_fid_inception=True
        ).eval()
    directory = tmp_path_factory.mktemp("inception")
    torch_path = directory / "pt_inception-random.pth"
    torch.save(full.state_dict(), torch_path)  # with its num_batches_tracked counters
    out = directory / "pt_inception-random.safetensors"
    inception_weights.main([f"--torch_weights={torch_path}", f"--out={out}"])
    network = inception.load_inception(out)
    return pool_network, full.fc.weight.detach(), full.fc.bias.detach(), network, out


def _relative_error(ours: jax.Array, theirs: torch.Tensor) -> float:
    theirs = theirs.detach().numpy()
    return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize(
    "shape", [(2, 32, 32, 3), (2, 8, 8, 1), (1, 299, 299, 3)], ids=["rgb32", "grey8", "rgb299"]
)
def test_pool_and_logits_match_pytorch_fid(reference, shape):
    pool_network, fc_weight, fc_bias, network, _ = reference
    images = np.random.default_rng(1).random(shape, dtype=np.float32)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
    with torch.no_grad():
        pool_ref = pool_network(nchw)[0].flatten(1)  # [B, 2048]
        logits_ref = F.linear(pool_ref, fc_weight, fc_bias)  # [B, 1008]

    outputs = jax.jit(inception.inception_model().apply)(network.params, jnp.asarray(images))

    assert outputs.pool.shape == (shape[0], 2048) and outputs.logits.shape == (shape[0], 1008)
    assert _relative_error(outputs.pool, pool_ref) < TOLERANCE
    assert _relative_error(outputs.logits, logits_ref) < TOLERANCE
    assert _relative_error(outputs.unbiased_logits, logits_ref - fc_bias) < TOLERANCE
    # Differences between images are far above the tolerance: the comparison has teeth.
    if shape[0] > 1:
        assert _relative_error(outputs.pool[0], pool_ref[1]) > 100 * TOLERANCE


def test_load_inception_describes_the_network(reference):
    *_, network, path = reference
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert network.name == "inception"
    assert (network.feature_dim, network.num_classes) == (2048, 1008)
    assert network.weights_id == f"{path.name}:{digest[:12]}"
    params = inception.inception_model().abstract_params
    assert jax.tree.map(jnp.shape, network.params) == jax.tree.map(lambda x: x.shape, params)


def test_feature_network_apply_gives_pool_and_unbiased_logits(reference):
    pool_network, fc_weight, _, network, _ = reference
    images = np.random.default_rng(4).random((1, 16, 16, 3), dtype=np.float32)
    with torch.no_grad():
        pool_ref = pool_network(torch.from_numpy(images).permute(0, 3, 1, 2))[0].flatten(1)

    pool, logits = jax.jit(network.apply)(network.params, jnp.asarray(images))

    assert pool.dtype == logits.dtype == jnp.float32
    assert pool.shape == (1, 2048) and logits.shape == (1, 1008)
    assert _relative_error(pool, pool_ref) < TOLERANCE
    assert _relative_error(logits, F.linear(pool_ref, fc_weight)) < TOLERANCE


@pytest.mark.parametrize(
    "size, out",
    [((8, 8), (299, 299)), ((32, 20), (299, 299)), ((400, 350), (299, 299)), ((64, 64), (17, 23))],
    ids=["up8", "up32x20", "down400x350", "down64"],
)
def test_resize_matches_torch_interpolate(size, out):
    images = np.random.default_rng(2).random((2, *size, 3), dtype=np.float32)
    expected = F.interpolate(
        torch.from_numpy(images).permute(0, 3, 1, 2), size=out, mode="bilinear", align_corners=False
    ).permute(0, 2, 3, 1)
    resized = inception.resize_bilinear(jnp.asarray(images), *out)
    assert resized.shape == (2, *out, 3)
    np.testing.assert_allclose(np.asarray(resized), expected.numpy(), rtol=0, atol=2e-6)


def test_resize_to_the_same_size_is_the_identity():
    images = np.random.default_rng(3).random((1, 299, 299, 3), dtype=np.float32)
    resized = inception.resize_bilinear(jnp.asarray(images), 299, 299)
    np.testing.assert_array_equal(np.asarray(resized), images)


def test_preprocess_repeats_grey_and_maps_to_minus_one_one():
    grey = jnp.full((1, 4, 4, 1), 0.25)
    x = inception.preprocess(grey)
    assert x.shape == (1, 299, 299, 3)
    np.testing.assert_allclose(np.asarray(x), -0.5)
    with pytest.raises(ValueError, match=r"\[B, H, W, 1 or 3\].*\(1, 4, 4, 2\)"):
        inception.preprocess(jnp.zeros((1, 4, 4, 2)))
