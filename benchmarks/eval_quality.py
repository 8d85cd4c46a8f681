"""Digits FID against training steps and against sampler x NFE, on the embedded default.

    python benchmarks/eval_quality.py --workdir=runs/eval_quality
    python benchmarks/eval_quality.py --workdir=runs/eval_quality --nfe=5,10,20 --samplers=ddim,heun
    python benchmarks/eval_quality.py --workdir=runs/eval_few_step --run_dir=runs/digits_ddpm \
        --samplers=unipc,dpmpp_3m --spacings=trailing,logsnr --grid-dirs=runs/digits_ddpm/grids

Trains `configs/digits_ddpm.py` (or `--config`) with in-loop evaluation every `--eval_every`
steps (eval.in_loop_num_samples EMA samples, the config's DDIM-100), unless the workdir already
holds the final checkpoint; prints the in-loop metrics against steps from TensorBoard; then
evaluates the final checkpoint with `--mode=eval`'s code for every sampler at (about) each NFE:
steps = NFE for one-evaluation samplers, (NFE + 1) // 2 for Heun (no corrector onto sigma 0).
Every figure uses `--num_samples` samples against the statistics of all 1797 digits.
`--spacings` evaluates every sampler on each grid rule; `--grid-dirs` adds, per directory, the
grid files `<sampler>_<steps>.json` found there (--mode=optimize_grid's or
benchmarks/few_step_grids.py's); the run ends with the best sampler and grid per NFE budget.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from diffusion import solvers  # noqa: E402
from training import checkpointing, eval_run, grid_files, loop  # noqa: E402

IN_LOOP_COLUMNS = ("fid", "kid_mean", "precision", "recall", "recognised", "accuracy")


def steps_for(sampler: str, nfe: int) -> int:
    """Steps of `sampler` that cost about `nfe` network evaluations."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def sweep_entries(
    names: list[str], nfes: list[int], spacings: list[str], grid_dirs: list[str], workdir: str
) -> list[str]:
    """eval.sweep entries: every sampler at each NFE on each spacing ('' = the config's), then
    on each grid file <dir>/<sampler>_<steps>.json that exists, copied to
    <workdir>/grids/<dir name>_<sampler>_<steps>.json so that two directories' grids of one
    sampler keep apart in the results."""
    entries = []
    for name in names:
        counts = ",".join(str(steps_for(name, n)) for n in nfes)
        entries += [
            f"{name}@{spacing}:{counts}" if spacing else f"{name}:{counts}"
            for spacing in spacings or [""]
        ]
        for directory in grid_dirs:
            for n in nfes:
                steps = steps_for(name, n)
                source = os.path.join(directory, f"{name}_{steps}.json")
                if os.path.exists(source):
                    tag = os.path.basename(os.path.normpath(directory))
                    copy = os.path.join(workdir, "grids", f"{tag}_{name}_{steps}.json")
                    os.makedirs(os.path.dirname(copy), exist_ok=True)
                    shutil.copyfile(source, copy)
                    entries.append(f"{name}@file:{copy}:{steps}")
    return entries


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
    if "eval/fid" not in scalars:
        return "(the run evaluated nothing in the loop)"
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
    parser.add_argument("--run_dir", default="", help="a trained run ('' = <workdir>/run)")
    parser.add_argument("--spacings", default="", help="comma-separated ('' = sampler.spacing)")
    parser.add_argument("--grid-dirs", default="", help="comma-separated grid-file directories")
    args = parser.parse_args()

    config = importlib.import_module(args.config).get_config()
    config.eval_every_steps = args.eval_every
    config.eval.in_loop_num_samples = config.eval.num_samples = args.num_samples
    config.eval.batch_size = min(1000, args.num_samples)
    config.eval.stats_dir = os.path.join(args.workdir, "stats")
    process = config.diffusion.process
    names = args.samplers.split(",") if args.samplers else solvers.names_for(process)
    nfes = [int(n) for n in args.nfe.split(",")]
    run_dir = args.run_dir or os.path.join(args.workdir, "run")
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
    spacings = [s for s in args.spacings.split(",") if s]
    grid_dirs = [d for d in args.grid_dirs.split(",") if d]
    config.eval.sweep = ";".join(sweep_entries(names, nfes, spacings, grid_dirs, args.workdir))
    stats_dir = config.eval.stats_dir
    if not (os.path.isdir(stats_dir) and os.listdir(stats_dir)):
        eval_run.eval_stats(config)  # a run trained elsewhere: this workdir has no statistics
    records = eval_run.evaluate_checkpoint(config, run_dir)
    print(f"\nSampler x grid x NFE ({args.num_samples} samples, final checkpoint):\n")
    print(
        "| sampler | grid | steps | NFE | FID | KID | precision | recall | recognised | seconds |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for record in records:
        values = record["metrics"]
        grid = grid_files.short_name(record["spacing"])
        print(
            f"| {record['sampler']} | {grid} | {record['num_steps']} | "
            f"{record['nfe']} | {values['fid']:.2f} | "
            f"{values['kid_mean']:.2f} | {values['precision']:.3f} | {values['recall']:.3f} | "
            f"{values['recognised']:.3f} | {record['wall_seconds']:.1f} |",
            flush=True,
        )
    print("\n" + eval_run.format_best_per_nfe(records))
    print(f"\ncommand: python {' '.join(sys.argv)}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
