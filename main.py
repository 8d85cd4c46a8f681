"""Entry point: `python main.py --config=configs/digits_ddpm.py --workdir=/tmp/run`.

Parses flags, starts multi-process JAX when asked, sets up logging, and hands over to the
training package. No training logic lives here.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "sample", "eval", "eval_stats", "export", "compile", "optimize_grid")

FLAGS = flags.FLAGS
# Unknown --config.x=y keys are let through here so that RunConfig refuses them like every other
# bad key (full path, what is allowed, the nearest field); known keys are parsed to their type.
config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to an ml_collections config file.",
    lock_config=False,
    accept_new_attributes=True,
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", MODES, "What to run.")
flags.DEFINE_bool(
    "multihost",
    False,
    "Call jax.distributed.initialize() (TPU pods and SLURM/GPU clusters detect their peers).",
)
flags.DEFINE_string(
    "coordinator_address",
    "",
    'With --multihost: host:port of process 0 ("": auto-detect on TPU pods / SLURM).',
)
flags.DEFINE_integer("num_processes", 0, "With --multihost: number of processes (0: auto-detect).")
flags.DEFINE_integer(
    "process_id", -1, "With --multihost: this process's index in [0, num_processes) (-1: auto)."
)
flags.mark_flags_as_required(["config", "workdir"])


def distributed_args(
    multihost: bool, coordinator_address: str, num_processes: int, process_id: int
) -> dict[str, str | int] | None:
    """Arguments for jax.distributed.initialize(), or None for a single-process run.

    No explicit values: {} (the cluster tells JAX its peers). Explicit ones must come together.
    """
    explicit = {
        "--coordinator_address": coordinator_address != "",
        "--num_processes": num_processes != 0,
        "--process_id": process_id != -1,
    }
    if not multihost:
        if any(explicit.values()):
            given = ", ".join(name for name, set_ in explicit.items() if set_)
            raise app.UsageError(f"{given} need --multihost.")
        return None
    if not any(explicit.values()):
        return {}
    missing = [name for name, set_ in explicit.items() if not set_]
    if missing:
        raise app.UsageError(
            "--coordinator_address, --num_processes and --process_id go together; "
            f"missing {', '.join(missing)}."
        )
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise app.UsageError(
            f"--coordinator_address={coordinator_address!r} must be host:port, e.g. 10.0.0.1:1234."
        )
    if num_processes < 1:
        raise app.UsageError(f"--num_processes={num_processes} must be >= 1.")
    if not 0 <= process_id < num_processes:
        raise app.UsageError(
            f"--process_id={process_id} must be in [0, --num_processes={num_processes})."
        )
    return {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    distributed = distributed_args(
        FLAGS.multihost, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    from input_pipeline.tf_devices import hide_accelerators_from_tensorflow  # noqa: PLC0415

    hide_accelerators_from_tensorflow()  # before tf.data or tfds can claim GPU memory
    import jax  # noqa: PLC0415

    if distributed is not None:
        # Cross-process collectives of the CPU backend (JAX's default, made explicit: only CPU
        # runs use it, e.g. several CPU processes on one machine as tests/test_multihost.py does).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**distributed)
    from training import (  # noqa: PLC0415
        compilation_cache,
        config_checks,
        eval_run,
        export_run,
        grid_run,
        loop,
        sample_run,
    )
    from training.run_config import RunConfig  # noqa: PLC0415

    if FLAGS.mode == "compile":  # checked against the TPU slice's devices, not this host's
        from training import compile_run  # noqa: PLC0415 (needs libtpu, only here)

        try:
            compile_run.compile_for_topology(FLAGS.config, FLAGS.workdir)
        except compile_run.DoesNotFitError as error:
            logging.error("%s", error)
            raise SystemExit(2) from None
        return
    # The whole config, typed and checked once (ConfigError naming the field), before anything
    # compiles: JAX decides once per process whether the compilation cache is used.
    run = RunConfig.from_configdict(FLAGS.config)
    config_checks.check_kernels_run_here(run)
    cache_dir = run.compilation_cache_dir
    cached = compilation_cache.enable_compilation_cache(cache_dir)
    if cached is not None:
        logging.info("Compilation cache %s: %d entries", cache_dir, cached)

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
        loop.train_and_evaluate(run, FLAGS.workdir)
    elif FLAGS.mode == "sample":
        sample_run.sample_from_checkpoint(run, FLAGS.workdir)
    elif FLAGS.mode == "eval":
        eval_run.evaluate_checkpoint(run, FLAGS.workdir)
    elif FLAGS.mode == "eval_stats":
        eval_run.eval_stats(run)
    elif FLAGS.mode == "export":
        export_run.export_pipeline(run, FLAGS.workdir)
    elif FLAGS.mode == "optimize_grid":
        grid_run.optimize_grid(run, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
