"""Digits FID against training steps and against sampler x NFE, on the embedded default.

    python benchmarks/eval_quality.py --workdir=runs/eval_quality
    python benchmarks/eval_quality.py --workdir=runs/eval_quality --nfe=5,10,20 --samplers=ddim,heun

Trains `configs/digits_ddpm.py` (or `--config`) with in-loop evaluation every `--eval_every`
steps (eval.in_loop_num_samples EMA samples, the config's DDIM-100), unless the workdir already
holds the final checkpoint; prints the in-loop metrics against steps from TensorBoard; then
evaluates the final checkpoint with `--mode=eval`'s code for every sampler at (about) each NFE:
steps = NFE for one-evaluation samplers, (NFE + 1) // 2 for Heun (no corrector onto sigma 0).
Every figure uses `--num_samples` samples against the statistics of all 1797 digits.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from diffusion import solvers  # noqa: E402
from training import checkpointing, eval_run, loop  # noqa: E402

IN_LOOP_COLUMNS = ("fid", "kid_mean", "precision", "recall", "recognised", "accuracy")


def steps_for(sampler: str, nfe: int) -> int:
    """Steps of `sampler` that cost about `nfe` network evaluations."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def actual_nfe(sampler: str, steps: int) -> int:
    """Network evaluations of `steps` steps (Heun: two per step but the last)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the scalar summaries in the workdir's event files."""
    import tensorflow as tf  # noqa: PLC0415
    from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415

    events = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
    events.Reload()
    scalars = {}
    for tag in events.Tags()["tensors"]:
        values = [(e.step, tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
        if all(v.ndim == 0 for _, v in values):
            scalars[tag] = [(step, float(v)) for step, v in values]
    return scalars


def in_loop_table(workdir: str) -> str:
    """The in-loop eval/* scalars as a markdown table, one row per evaluated step."""
    scalars = read_scalars(workdir)
    columns = [c for c in IN_LOOP_COLUMNS if f"eval/{c}" in scalars]
    steps = [step for step, _ in scalars["eval/fid"]]
    lines = [
        "| step | " + " | ".join(columns) + " |",
        "|---:|" + "---:|" * len(columns),
    ]
    for row, step in enumerate(steps):
        cells = [f"{scalars[f'eval/{c}'][row][1]:.4g}" for c in columns]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/eval_quality")
    parser.add_argument("--config", default="configs.digits_ddpm")
    parser.add_argument("--eval_every", type=int, default=500)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--nfe", default="5,10,20,50,100")
    parser.add_argument("--samplers", default="", help="comma-separated ('' = all for the process)")
    args = parser.parse_args()

    config = importlib.import_module(args.config).get_config()
    config.eval_every_steps = args.eval_every
    config.eval.in_loop_num_samples = config.eval.num_samples = args.num_samples
    config.eval.batch_size = min(1000, args.num_samples)
    config.eval.stats_dir = os.path.join(args.workdir, "stats")
    process = config.diffusion.process
    names = args.samplers.split(",") if args.samplers else solvers.names_for(process)
    nfes = [int(n) for n in args.nfe.split(",")]
    run_dir = os.path.join(args.workdir, "run")
    manager = checkpointing.make_manager(run_dir, config.max_checkpoints_to_keep)
    start = time.perf_counter()
    if manager.latest_step() != config.num_train_steps:
        loop.train_and_evaluate(config, run_dir)
        print(f"trained {config.num_train_steps} steps in {time.perf_counter() - start:.0f} s")
    print(
        f"\nIn-loop evaluation ({args.num_samples} samples, {config.sampler.name} "
        f"{config.sampler.num_steps} steps):\n\n{in_loop_table(run_dir)}\n",
        flush=True,
    )

    config.eval_every_steps = 0
    config.eval.sweep = ";".join(
        f"{name}:{','.join(str(steps_for(name, n)) for n in nfes)}" for name in names
    )
    records = eval_run.evaluate_checkpoint(config, run_dir)
    print(f"\nSampler x NFE ({args.num_samples} samples, final checkpoint):\n")
    print("| sampler | steps | NFE | FID | KID | precision | recall | recognised | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for record in records:
        values = record["metrics"]
        print(
            f"| {record['sampler']} | {record['num_steps']} | "
            f"{actual_nfe(record['sampler'], record['num_steps'])} | {values['fid']:.2f} | "
            f"{values['kid_mean']:.2f} | {values['precision']:.3f} | {values['recall']:.3f} | "
            f"{values['recognised']:.3f} | {record['wall_seconds']:.1f} |",
            flush=True,
        )
    print(f"\ncommand: python {' '.join(sys.argv)}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
