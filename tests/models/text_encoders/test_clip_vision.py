"""CLIP image tower and heads: parity with transformers' CLIPModel on the same pixels."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from models.text_encoders import clip_vision
from tests.models.text_encoders import checkpoints
from tests.models.text_encoders.clip_checkpoint import PROJECTION_DIM, VISION, clip_model_checkpoint

TOLERANCE = 1e-5  # max abs error relative to the reference's scale (checkpoints.max_error)


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    """(directory, torch CLIPModel) and our loaded image tower + heads."""
    directory, model = clip_model_checkpoint(tmp_path_factory.mktemp("clip_model"))
    return model, clip_vision.load_vision(directory)


def _pooler(output) -> np.ndarray:
    """transformers 5 returns a BaseModelOutputWithPooling from get_*_features, 4.x a tensor."""
    tensor = output if isinstance(output, torch.Tensor) else output.pooler_output
    return tensor.detach().numpy()


def test_config_from_full_and_vision_only_configs(clip_model):
    model, loaded = clip_model
    expected = clip_vision.CLIPVisionConfig(
        hidden_size=48,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=PROJECTION_DIM,
    )
    assert loaded.config == expected
    assert expected.num_patches == 16
    assert clip_vision.CLIPVisionConfig.from_hf(model.config.to_dict()) == expected
    # A CLIPVisionModel config.json: the section itself, its own projection_dim.
    vision_only = {**model.config.vision_config.to_dict(), "projection_dim": PROJECTION_DIM}
    assert vision_only["model_type"] == "clip_vision_model"
    assert clip_vision.CLIPVisionConfig.from_hf(vision_only) == expected
    # transformers 5 allows [h, w] sizes; old checkpoints carry a `vision_config_dict` that wins.
    full = {"model_type": "clip", "projection_dim": 16, "vision_config": {**VISION}}
    full["vision_config"]["image_size"] = [32, 32]
    full["vision_config_dict"] = {"patch_size": 4}
    parsed = clip_vision.CLIPVisionConfig.from_hf(full)
    assert (parsed.image_size, parsed.patch_size, parsed.num_patches) == (32, 4, 64)


def test_config_rejects_non_square_and_ragged_patches():
    with pytest.raises(ValueError, match="must be square"):
        clip_vision.CLIPVisionConfig(image_size=[32, 48])
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        clip_vision.CLIPVisionConfig(image_size=30, patch_size=8)


def test_tower_and_projections_match_transformers(clip_model):
    """Same normalised pixels in: last hidden state, pooled output, image_embeds, logit_scale."""
    model, loaded = clip_model
    pixels = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)  # NCHW
    ours = loaded.network.apply(loaded.params, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
    with torch.no_grad():
        reference = model.vision_model(pixel_values=torch.from_numpy(pixels))
        image_embeds = _pooler(model.get_image_features(pixel_values=torch.from_numpy(pixels)))
    assert ours.hidden.shape == (3, 17, 48) and ours.image_embeds.shape == (3, PROJECTION_DIM)
    errors = {
        "hidden": checkpoints.max_error(ours.hidden, reference.last_hidden_state.numpy()),
        "pooled": checkpoints.max_error(ours.pooled, reference.pooler_output.numpy()),
        "image_embeds": checkpoints.max_error(ours.image_embeds, image_embeds),
    }
    assert max(errors.values()) < TOLERANCE, errors
    np.testing.assert_allclose(loaded.params["logit_scale"], model.logit_scale.item(), rtol=1e-7)
    assert abs(float(loaded.params["logit_scale"]) - 2.6592) > 1e-3  # perturbed, not the init


def test_project_text_is_text_projection(clip_model):
    model, loaded = clip_model
    pooled = np.random.default_rng(1).normal(size=(2, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model.text_projection(torch.from_numpy(pooled)).numpy()
    ours = clip_vision.project_text(loaded.params, jnp.asarray(pooled))
    assert checkpoints.max_error(ours, expected) < TOLERANCE


def test_tower_rejects_pixels_of_another_size(clip_model):
    _, loaded = clip_model
    with pytest.raises(ValueError, match="takes 32x32 pixels, got 40x40"):
        loaded.network.apply(loaded.params, jnp.zeros((1, 40, 40, 3)))
