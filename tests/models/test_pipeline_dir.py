"""The layout checks of a diffusers Stable Diffusion pipeline directory."""

import json
import shutil

import pytest

from errors import ConfigError
from models import pipeline_dir
from tests.models.sd_pipeline_checkpoint import tiny_pipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sd_tiny")
    tiny_pipeline(directory)
    return directory


def test_a_saved_pipeline_is_found_part_by_part(saved):
    parts = pipeline_dir.read_pipeline_dir(saved)
    assert parts.pipeline_class == "StableDiffusionPipeline"
    assert parts.scheduler_class == "DDIMScheduler"
    assert (parts.unet / "diffusion_pytorch_model.safetensors").is_file()
    assert (parts.vae / "config.json").is_file()
    assert (parts.text_encoder / "model.safetensors").is_file()
    assert (parts.tokenizer / "vocab.json").is_file()
    assert parts.scheduler_config()["steps_offset"] == 1
    assert parts.tokenizer_max_length() == 12


def _copy(saved, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(saved, target)
    return target


def _edit_index(directory, **changes):
    path = directory / "model_index.json"
    index = json.loads(path.read_text())
    index.update(changes)
    path.write_text(json.dumps(index))


def test_missing_and_unsupported_parts_are_named(saved, tmp_path):
    with pytest.raises(ConfigError, match=r"has no model_index.json.*found \[\]"):
        (tmp_path / "empty").mkdir()
        pipeline_dir.read_pipeline_dir(tmp_path / "empty")
    broken = _copy(saved, tmp_path)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ConfigError, match="missing its vae/ folder"):
        pipeline_dir.read_pipeline_dir(broken)
    shutil.rmtree(broken)
    broken = _copy(saved, tmp_path)
    _edit_index(broken, _class_name="StableDiffusionXLPipeline")
    with pytest.raises(ConfigError, match="StableDiffusionXLPipeline is not supported.*two text"):
        pipeline_dir.read_pipeline_dir(broken)
    _edit_index(broken, _class_name="StableDiffusionPipeline", unet=["diffusers", "UNet2DModel"])
    with pytest.raises(ConfigError, match="unet is a UNet2DModel; supported: UNet2DCondition"):
        pipeline_dir.read_pipeline_dir(broken)
    _edit_index(broken, unet=["diffusers", "UNet2DConditionModel"], text_encoder=[None, None])
    with pytest.raises(ConfigError, match="names no 'text_encoder' component"):
        pipeline_dir.read_pipeline_dir(broken)


def test_a_lora_only_folder_is_named(tmp_path):
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="LoRA weights only.*pytorch_lora_weights"):
        pipeline_dir.read_pipeline_dir(tmp_path)
