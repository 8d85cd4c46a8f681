"""--mode=eval_stats (reference statistics of the data) and --mode=eval (metrics of samples).

    python main.py --mode=eval_stats --config=configs/digits_ddpm.py --workdir=runs/digits
    python main.py --mode=eval --config=configs/digits_ddpm.py --workdir=runs/digits

eval_stats passes every image of the reference split once through the feature network and
stores the moments (and the raw features, for KID and precision/recall) in a file named by data
set, split, resolution, feature network and its weights; eval restores the newest checkpoint,
draws eval.num_samples EMA samples per (sampler, grid, steps) of the sweep, and writes
`eval/<step>_<sampler>_<steps>.json` (`<sampler>@<grid>_<steps>` for a point with its own grid),
TensorBoard scalars, and a markdown table of the sweep followed by the best sampler and grid of
each NFE budget (lowest FID).
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import ml_collections
from absl import logging

import paths
from evaluation.eval_config import SweepPoint
from training import checkpointing, grid_files, loop, metric_writer
from training.eval_features import make_featurizer
from training.eval_sampling import EvalSampler
from training.evaluator import (
    Reference,
    compute_reference,
    evaluate_point,
    load_feature_network,
    load_reference,
    make_clip_judge,
)
from training.experiment import build_experiment
from training.run_config import RunConfig


def eval_stats(config: RunConfig | ml_collections.ConfigDict) -> Reference:
    """--mode=eval_stats: computes and stores the reference statistics of the config's data."""
    run = config if isinstance(config, RunConfig) else RunConfig.from_configdict(config)
    return compute_reference(run, load_feature_network(run))


def evaluate_checkpoint(
    config: RunConfig | ml_collections.ConfigDict, workdir: str, devices=None
) -> list[dict[str, object]]:
    """--mode=eval: metrics of the newest checkpoint's EMA samples for every sweep point.

    `devices` (default: all) is the mesh the samples are drawn and featurised on."""
    experiment = build_experiment(config, devices)
    run = experiment.run
    network = load_feature_network(run)
    reference = load_reference(run, network, compute_missing=False)
    manager = checkpointing.make_manager(workdir, run.max_checkpoints_to_keep)
    if manager.latest_step() is None:
        raise FileNotFoundError(
            f"--mode=eval found no checkpoint under {paths.absolute(workdir)}/checkpoints."
        )
    state, shardings = loop.init_or_restore(experiment, manager, run.seed)
    step = int(jax.device_get(state.step))
    featurize = make_featurizer(network, experiment.mesh)
    writer = metric_writer.create_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False
    )
    records, clip, eval_samplers = [], None, {}
    for point in run.eval.sweep_points(run.sampler.name, run.sampler.num_steps):
        key = (point.sampler, point.spacing)
        if key not in eval_samplers:  # one compile per sampler and grid, every step count
            eval_samplers[key] = EvalSampler(
                experiment, network, shardings.ema_params, point.sampler, spacing=point.spacing
            )
        sampler = eval_samplers[key]
        clip = clip or make_clip_judge(experiment, sampler)
        start = time.perf_counter()
        values = evaluate_point(
            experiment,
            state.ema_params,
            sampler,
            featurize,
            reference,
            point,
            run.eval.num_samples,
            clip,
        )
        nfe = sampler.evaluations(point.num_steps)
        record = _record(run, network, reference, point, nfe, step, values, start)
        records.append(record)
        name = f"{point_label(point)}_{point.num_steps}"
        writer.write_scalars(step, {f"eval/{name}/{k}": v for k, v in values.items()})
        if jax.process_index() == 0:
            paths.write_text(
                os.path.join(workdir, "eval", f"{step}_{name}.json"), json.dumps(record, indent=2)
            )
        logging.info("%s", json.dumps(record))
    writer.close()  # flushed; a remote workdir's events copied there
    if jax.process_index() == 0:
        table = format_table(records) + "\n\n" + format_best_per_nfe(records)
        print(table, flush=True)
        logging.info("eval sweep at step %d:\n%s", step, table)
        paths.write_text(os.path.join(workdir, "eval", f"{step}_table.md"), table + "\n")
    return records


def point_label(point: SweepPoint) -> str:
    """'ddim', or with a grid given 'ddim@karras' ('file:PATH' as the file's stem): what names
    a sweep point's files and scalars, so two grids of one sampler never share them (two grid
    files of one stem are refused by config_checks.check_eval)."""
    if not point.spacing:
        return point.sampler
    return f"{point.sampler}@{grid_files.short_name(point.spacing)}"


def _record(run, network, reference, point, nfe, step, values, start) -> dict[str, object]:
    sampler = run.sampler
    return {
        "step": step,
        "sampler": point.sampler,
        "num_steps": point.num_steps,
        "spacing": point.spacing or sampler.spacing,
        "nfe": nfe,  # network evaluations per image (a guided pair is one batched evaluation)
        "eta": sampler.eta,
        "guidance_scale": sampler.guidance_scale,
        "num_samples": int(values["num_samples"]),
        "feature_network": network.name,
        "feature_weights": network.weights_id,
        "reference": reference.path,
        "reference_count": reference.stats.count,
        "seed": run.eval.seed,
        "wall_seconds": round(time.perf_counter() - start, 2),
        "metrics": values,
    }


TABLE_COLUMNS = ("fid", "kid_mean", "precision", "recall", "inception_score", "accuracy")
BEST_METRIC = "fid"  # the table's first column: the best point of an NFE budget has the lowest


def format_table(records: list[dict[str, object]]) -> str:
    """A markdown table: one row per (sampler, grid, steps), the headline metrics as columns."""
    present = [c for c in TABLE_COLUMNS if any(c in r["metrics"] for r in records)]
    lines = [
        "| sampler | grid | steps | NFE | n | " + " | ".join(present) + " | seconds |",
        "|---|---|---:|---:|---:|" + "---:|" * len(present) + "---:|",
    ]
    for record in records:
        values = record["metrics"]
        cells = [f"{values[c]:.4g}" if c in values else "" for c in present]
        grid = grid_files.short_name(record["spacing"])
        lines.append(
            f"| {record['sampler']} | {grid} | {record['num_steps']} | "
            f"{record['nfe']} | {record['num_samples']} | "
            + " | ".join(cells)
            + f" | {record['wall_seconds']:.1f} |"
        )
    return "\n".join(lines)


def best_per_nfe(records: list[dict[str, object]]) -> list[dict[str, object]]:
    """For each NFE budget of the sweep (ascending), its record of lowest BEST_METRIC (the
    first in sweep order on a tie)."""
    best: dict[int, dict[str, object]] = {}
    for record in records:
        value = record["metrics"].get(BEST_METRIC)
        if value is None or not math.isfinite(value):
            continue
        held = best.get(record["nfe"])
        if held is None or value < held["metrics"][BEST_METRIC]:
            best[record["nfe"]] = record
    return [best[nfe] for nfe in sorted(best)]


def format_best_per_nfe(records: list[dict[str, object]]) -> str:
    """The recommendation: which sampler and grid to use at each NFE budget of the sweep."""
    lines = [
        f"Best sampler and grid per NFE budget (lowest {BEST_METRIC}; NFE = network evaluations "
        "per image, a guided pair counted once):",
        "",
        f"| NFE | sampler | grid | steps | {BEST_METRIC} |",
        "|---:|---|---|---:|---:|",
    ]
    for record in best_per_nfe(records):
        grid = grid_files.short_name(record["spacing"])
        lines.append(
            f"| {record['nfe']} | {record['sampler']} | {grid} | "
            f"{record['num_steps']} | {record['metrics'][BEST_METRIC]:.4g} |"
        )
    return "\n".join(lines)
