"""Entry point: `python main.py --config=configs/digits_ddpm.py --workdir=/tmp/run`.

Parses flags, starts multi-process JAX when asked, sets up logging, and hands over to the
training package. No training logic lives here.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "sample")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", MODES, "What to run.")
flags.DEFINE_bool(
    "multihost",
    False,
    "Call jax.distributed.initialize() (TPU pods and SLURM/GPU clusters detect their peers).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # noqa: PLC0415 (only to hide accelerators from tf.data)

    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
    import jax  # noqa: PLC0415

    if FLAGS.multihost:
        jax.distributed.initialize()
    from training import loop, sample_run  # noqa: PLC0415 (after distributed init)

    logging.info(
        "JAX process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    logging.info("Config:\n%s", FLAGS.config)
    if FLAGS.mode == "train":
        loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "sample":
        sample_run.sample_from_checkpoint(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
