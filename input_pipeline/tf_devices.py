"""Keeps TensorFlow (tf.data, tfds) on the CPU so it never takes GPU / TPU memory from JAX."""

from __future__ import annotations

import os


def hide_accelerators_from_tensorflow() -> None:
    """Makes TensorFlow see no GPU / TPU; call before anything runs a TF op.

    TensorFlow reserves most of a GPU's memory the first time it touches it (a tf.data
    pipeline is enough), leaving JAX little. main.py and the notebook API call this first."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter
    import tensorflow as tf  # noqa: PLC0415 (heavy; only where data may go through tf.data)

    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except RuntimeError:
        # Raised once TF has initialised its devices: too late to hide them, already on CPU
        # if this function ran first in the process (set_visible_devices is sticky).
        if tf.config.get_visible_devices("GPU") or tf.config.get_visible_devices("TPU"):
            raise
