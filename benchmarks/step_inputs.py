"""What benchmarks/train_step.py steps on: the CIFAR configs (`configs/cifar_ddpm.py`, the
35.7M-parameter U-Net, and `configs/cifar_dit.py`, DiT-S/2) at one batch, dtype and remat, and a
random host batch shaped like the input pipeline's.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from configs import cifar_ddpm, cifar_dit
from training.experiment import Experiment

# key -> (table name, config factory)
MODELS = {"unet": ("CIFAR U-Net", cifar_ddpm.get_config), "dit": ("DiT-S/2", cifar_dit.get_config)}


def model_config(
    model: str,
    batch: int,
    dtype: str = "float32",
    remat: bool = False,
    *,
    attention_impl: str | None = None,
    donate_state: bool = True,
    conv_impl: str = "dots",
) -> ml_collections.ConfigDict:
    """The CIFAR config of `model` ("unet" | "dit") at one global batch, dtype and remat, with
    `model.attention_impl`, `training.donate_state` and (U-Net) `model.conv_impl` set."""
    config = MODELS[model][1]()
    config.batch_size = batch
    config.model.dtype = dtype
    config.model.remat = remat
    config.model.attention_impl = attention_impl
    config.training.donate_state = donate_state
    if "conv_impl" in config.model:  # the DiT has no convolutions
        config.model.conv_impl = conv_impl
    return config


def random_host_batch(experiment: Experiment, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch shaped like the pipeline's: image [B, H, W, C] in [-1, 1], label, caption_id."""
    rng = np.random.default_rng(seed)
    height = width = experiment.data.image_size
    return {
        "image": rng.uniform(-1, 1, (batch, height, width, experiment.data.channels)).astype(
            np.float32
        ),
        "label": rng.integers(0, max(experiment.num_classes, 1), batch).astype(np.int32),
        "caption_id": np.zeros(batch, np.int32),
    }
