"""CLIP score: embeddings and scores against transformers' CLIPModel, preprocessing against
CLIPImageProcessorPil, and the errors for checkpoints without a vision tower."""

import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from evaluation import clip_score
from tests.models.text_encoders import checkpoints
from tests.models.text_encoders.clip_checkpoint import IMAGE_MEAN, IMAGE_STD

TOLERANCE = 1e-5  # max abs error relative to the reference's scale (checkpoints.max_error)
PROMPTS = checkpoints.CORPUS[:8]  # sentences the test tokenizer was trained on


@pytest.fixture(scope="module")
def scorer(tiny_clip_model):
    return clip_score.load_clip(tiny_clip_model[0])


def _images(count: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(count).uniform(size=(count, size, size, 3)).astype(np.float32)


def _torch_pixels(images: np.ndarray) -> torch.Tensor:
    """NHWC [0, 1] at the model's size -> the NCHW pixels CLIPModel takes (our mean/std)."""
    normalised = (images - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD)
    return torch.from_numpy(normalised.transpose(0, 3, 1, 2).astype(np.float32))


def _pooler(output) -> np.ndarray:
    """transformers 5 returns a BaseModelOutputWithPooling from get_*_features, 4.x a tensor."""
    tensor = output if isinstance(output, torch.Tensor) else output.pooler_output
    return tensor.detach().numpy()


def test_loads_sizes_and_preprocessor_normalisation(scorer):
    assert (scorer.image_size, scorer.text_encoder.max_length) == (32, checkpoints.MAX_POSITIONS)
    assert (scorer.mean, scorer.std) == (IMAGE_MEAN, IMAGE_STD)


def test_default_normalisation_without_preprocessor_config(tiny_clip_model, tmp_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(tiny_clip_model[0] / name, tmp_path / name)
    loaded = clip_score.load_clip(tmp_path, max_length=8)
    assert (loaded.mean, loaded.std) == (clip_score.CLIP_MEAN, clip_score.CLIP_STD)
    assert loaded.text_encoder.max_length == 8


def test_embeddings_match_transformers(scorer, tiny_clip_model):
    model = tiny_clip_model[1]
    images = _images(len(PROMPTS))
    input_ids, mask = scorer.text_encoder.tokenize(PROMPTS)
    with torch.no_grad():
        image_embeds = _pooler(model.get_image_features(pixel_values=_torch_pixels(images)))
        text_embeds = _pooler(
            model.get_text_features(
                input_ids=torch.from_numpy(input_ids.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)),
            )
        )
    errors = {
        "image": checkpoints.max_error(scorer.image_embeddings(images), image_embeds),
        "text": checkpoints.max_error(scorer.text_embeddings(PROMPTS), text_embeds),
    }
    assert max(errors.values()) < TOLERANCE, errors


def test_clip_score_is_clipped_scaled_cosine_of_transformers(scorer, tiny_clip_model):
    """CLIPModel's logits_per_image diagonal / exp(logit_scale) is the pairs' cosine."""
    model = tiny_clip_model[1]
    images = _images(len(PROMPTS))
    input_ids, mask = scorer.text_encoder.tokenize(PROMPTS)
    with torch.no_grad():
        logits = model(
            input_ids=torch.from_numpy(input_ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            pixel_values=_torch_pixels(images),
        ).logits_per_image
        cosine = (torch.diagonal(logits) / model.logit_scale.exp()).numpy()
    # A random model: both signs occur, so the clipping at 0 is exercised.
    assert cosine.min() < -0.05 and cosine.max() > 0.05, cosine
    for scale in (clip_score.TORCHMETRICS_SCALE, clip_score.HESSEL_W):
        scores = np.asarray(scorer.clip_score(images, PROMPTS, scale=scale))
        np.testing.assert_allclose(scores, scale * np.maximum(cosine, 0), rtol=0, atol=scale * 1e-5)
    default = np.asarray(scorer.clip_score(images, PROMPTS))
    np.testing.assert_allclose(default, 100 * np.maximum(cosine, 0), rtol=0, atol=1e-3)


def test_clip_scores_closed_form():
    a = jnp.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    b = jnp.array([[6.0, 8.0], [-1.0, 0.0], [1.0, 1.0]])  # cos 1, -1 (clipped), 1/sqrt(2)
    expected = [2.5, 0.0, 2.5 / np.sqrt(2)]
    np.testing.assert_allclose(clip_score.clip_scores(a, b, scale=2.5), expected, rtol=1e-6)


@pytest.mark.parametrize("height, width", [(48, 72), (53, 37), (100, 100), (20, 30), (32, 45)])
def test_preprocess_within_one_grey_level_of_pil(height, width):
    """Against CLIPImageProcessorPil (PIL bicubic, transformers' crop) on 8-bit noise images:
    PIL rounds to 8 bits after each pass, so up to one grey level apart, 0.3 on average."""
    noise = np.random.default_rng(height * width).integers(0, 256, (2, height, width, 3))
    noise = noise.astype(np.uint8)
    processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
    )
    expected = processor(images=list(noise), return_tensors="np")["pixel_values"]
    ours = clip_score.preprocess(jnp.asarray(noise / 255.0), 32, mean=(0, 0, 0), std=(1, 1, 1))
    error = 255 * np.abs(np.asarray(ours) - expected.transpose(0, 2, 3, 1))
    assert ours.shape == (2, 32, 32, 3)
    assert error.max() < 1.1 and error.mean() < 0.4, (error.max(), error.mean())


def test_preprocess_grey_images_and_normalisation():
    grey = _images(2, size=40)[..., :1]
    rgb = np.repeat(grey, 3, axis=-1)
    out_grey = clip_score.preprocess(jnp.asarray(grey), 32, IMAGE_MEAN, IMAGE_STD)
    np.testing.assert_array_equal(
        out_grey, clip_score.preprocess(jnp.asarray(rgb), 32, IMAGE_MEAN, IMAGE_STD)
    )
    same_size = _images(1)
    expected = (same_size - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD)
    np.testing.assert_allclose(
        clip_score.preprocess(jnp.asarray(same_size), 32, IMAGE_MEAN, IMAGE_STD),
        expected,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="1- or 3-channel"):
        clip_score.preprocess(jnp.zeros((1, 32, 32, 4)), 32)


def test_any_image_size_is_scored(scorer):
    scores = scorer.clip_score(_images(2, size=64), PROMPTS[:2])
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and np.all(scores >= 0)
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        scorer.clip_score(_images(2), PROMPTS[:3])


def test_text_only_checkpoint_is_refused(tmp_path):
    directory, _ = checkpoints.clip_checkpoint(tmp_path)  # a CLIPTextModel
    with pytest.raises(ValueError, match=f"{tmp_path}.*model_type 'clip_text_model'.*vision"):
        clip_score.load_clip(directory)


def test_clip_config_without_vision_tensors_is_refused(tiny_clip_model, tmp_path):
    """config.json says CLIPModel, but model.safetensors holds the text tower alone."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(tiny_clip_model[0] / "model.safetensors")
    text_only = {name: array for name, array in tensors.items() if name.startswith("text_model.")}
    save_file(text_only, tmp_path / "model.safetensors")
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_clip_model[0] / name, tmp_path / name)
    missing = r"vision tower \(vision_model\.\*\), visual_projection\.weight, text_projection"
    with pytest.raises(ValueError, match=f"{tmp_path}.*missing the {missing}"):
        clip_score.load_clip(tmp_path)
