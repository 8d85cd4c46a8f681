"""Throughput of the compiled train step: examples/s, step time, XLA FLOPs, achieved FLOP/s, MFU.

    python benchmarks/train_step.py                                # U-Net and DiT-S/2, batch 8
    python benchmarks/train_step.py --models=unet --steps=5 --dtype=float32,bfloat16 --remat=both
    python benchmarks/train_step.py --compilation_cache=/tmp/jax_cache   # run twice: 2nd is warm
    python benchmarks/train_step.py --models=dit --steps=5 --breakdown   # forward vs backward

The step is the repo's own (`training.loop.make_train_step`: jitted with explicit shardings, the
state donated) on the CIFAR configs (`configs/cifar_ddpm.py`, 35.7M-parameter U-Net, and
`configs/cifar_dit.py`, DiT-S/2), fed a random CIFAR-shaped batch. Step time is the median of
`--steps` timed steps after `--warmup` untimed ones. FLOPs per step are XLA's cost analysis of the
compiled step (for a scanned model, of its unrolled twin: XLA counts a loop body once); with
remat they include the recomputed forward. MFU counts model FLOPs (the same step without remat)
per second over the peak of `benchmarks/peak.py`: measured in this run on CPU, the datasheet's
dense bf16 figure on GPU / TPU, or `--peak_flops`. Each (dtype, remat) pair is a row. Run on one
device (no XLA_FLAGS device count): FLOPs and peak are summed over the mesh's devices.
`--breakdown` adds the forward pass, forward + backward, and whole step timed apart. The U-Net
runs with `model.conv_impl="dots"` (models/conv.py, the CPU fast path) unless `--conv_impl=xla`.
The configs and the batch are in `benchmarks/step_inputs.py`, the FLOP counting in
`benchmarks/flops.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sharding  # noqa: E402
from benchmarks import peak as peak_lib  # noqa: E402
from benchmarks.flops import (  # noqa: E402
    counting_twin,
    lower_abstract_step,
    model_flops,
    print_flops_check,
    step_flops,
)
from benchmarks.step_inputs import MODELS, model_config, random_host_batch  # noqa: E402
from diffusion import losses  # noqa: E402
from training import compilation_cache, conditioning, loop  # noqa: E402
from training import train_step as train_step_lib  # noqa: E402
from training.experiment import Experiment, build_experiment  # noqa: E402


@dataclasses.dataclass(frozen=True)
class StepMeasurement:
    """One configuration's numbers; FLOPs are per step summed over the mesh's devices."""

    params: int
    batch: int
    devices: int
    lower_s: float  # tracing and lowering of the step to StableHLO
    compile_s: float  # XLA compile of the lowered step (or its load from a persistent cache)
    flops: float  # XLA cost analysis, per optimizer step
    step_s: float  # median wall time of a step
    aliased_mib: float  # donated state buffers XLA reuses for the outputs
    load: tuple[float, float, float]  # os.getloadavg() right after the timed steps

    @property
    def examples_per_s(self) -> float:
        return self.batch / self.step_s

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.step_s


def fast_paths(args: argparse.Namespace) -> dict[str, object]:
    """model_config's keyword arguments from the command line's fast-path switches."""
    return {
        "attention_impl": args.attention_impl or None,
        "donate_state": args.donate_state,
        "conv_impl": args.conv_impl,
    }


def measure_train_step(
    config: ml_collections.ConfigDict, *, steps: int, warmup: int = 2, devices=None
) -> StepMeasurement:
    """Compiles the repo's train step for `config`, runs `warmup` + `steps` steps on one random
    batch, and returns the median step time, compile time and XLA's FLOPs per step."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    experiment = build_experiment(config, devices)
    state, shardings = loop.create_state(experiment, seed=0)
    step = loop.make_train_step(experiment, shardings)
    host_batch = random_host_batch(experiment, config.batch_size)
    batch = sharding.host_batch_to_global(host_batch, experiment.mesh)
    bank = experiment.frozen
    start = time.perf_counter()
    lowered = step.lower(state, batch, bank)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    for _ in range(warmup):
        state, _ = compiled(state, batch, bank)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, bank)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    load = os.getloadavg()
    if not np.isfinite(float(metrics["loss"])):
        raise RuntimeError(f"non-finite loss {float(metrics['loss'])}")
    return StepMeasurement(
        params=sum(x.size for x in jax.tree.leaves(experiment.model.abstract_params)),
        batch=config.batch_size,
        devices=experiment.mesh.devices.size,
        lower_s=lower_s,
        compile_s=compile_s,
        flops=step_flops(config, compiled, experiment.mesh.devices.size, devices),
        step_s=statistics.median(times),
        aliased_mib=compiled.memory_analysis().alias_size_in_bytes / 2**20,
        load=load,
    )


def median_seconds(fn, args: tuple, steps: int) -> float:
    """Median wall time of `fn(*args)`, blocked until ready, over `steps` calls after one more."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loss_inputs(experiment: Experiment, batch: dict, key: jax.Array) -> dict:
    """The loss's inputs {image, draws, cond} drawn the way `train_step` draws them."""
    cfg = experiment.step_config
    cond = conditioning.batch_conditions(
        cfg.conditioning, batch, experiment.caption_bank, key, cfg.cond_dropout, cfg.null_id
    )
    draws = losses.draw_noise(
        key, batch["image"], experiment.schedule, cfg.process, cfg.time_sampling
    )
    return {"image": batch["image"], "draws": draws, "cond": cond}


def experiment_loss(experiment: Experiment):
    """The train step's loss as `loss(params, batch, key)` (dropout on), to time its phases."""
    loss_fn = functools.partial(
        train_step_lib.diffusion_loss,
        model=experiment.model,
        config=experiment.step_config,
    )

    def loss(params, batch, key):
        return loss_fn(params, loss_inputs(experiment, batch, key), key)[0]

    return loss


def phase_breakdown(
    config: ml_collections.ConfigDict, steps: int, devices=None
) -> list[tuple[str, float, float]]:
    """(phase, FLOPs, median seconds) of the loss's forward pass, its forward + backward pass,
    and the whole step (+ optimizer, EMA, norms). A scanned model runs unrolled here."""
    config = ml_collections.ConfigDict(config.to_dict())
    if "use_scan" in config.model:
        config.model.use_scan = False
    experiment = build_experiment(config, devices)
    state, _ = loop.create_state(experiment, seed=0)
    host_batch = random_host_batch(experiment, config.batch_size)
    batch = sharding.host_batch_to_global(host_batch, experiment.mesh)
    forward = experiment_loss(experiment)
    args = (state.params, batch, jax.random.key(0))
    rows = []
    for name, fn in (("forward", forward), ("forward + backward", jax.grad(forward))):
        compiled = jax.jit(fn).lower(*args).compile()
        rows.append((name, peak_lib.cost_flops(compiled), median_seconds(compiled, args, steps)))
    del state, batch, args
    twin = counting_twin(config)
    if twin != config:  # count what the phases compute, not the loop bodies once
        twin_rows = phase_breakdown(twin, 1, devices)
        rows = [
            (name, flops, row[2]) for row, (name, flops, _) in zip(rows, twin_rows, strict=False)
        ]
    whole = measure_train_step(config, steps=steps, devices=devices)
    return [*rows, ("whole step", whole.flops, whole.step_s)]


def recompile_seconds(config: ml_collections.ConfigDict, devices=None) -> float:
    """Compile time of the step (lowering excluded) after `jax.clear_caches()` emptied the
    in-memory caches: with a persistent compilation cache, the time to load it from there."""
    jax.clear_caches()
    lowered = lower_abstract_step(config, devices)
    start = time.perf_counter()
    lowered.compile()
    return time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="unet,dit", help="comma-separated: unet,dit")
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16")
    parser.add_argument("--remat", choices=("off", "on", "both"), default="off")
    parser.add_argument("--compilation_cache", default="", help="persistent cache directory")
    parser.add_argument("--peak_flops", type=float, default=None, help="per-device FLOP/s")
    parser.add_argument(
        "--attention_impl",
        choices=("", "xla", "cudnn", "pallas_tpu"),
        default="",
        help='"": JAX chooses; pallas_tpu runs on TPUs only',
    )
    parser.add_argument(
        "--conv_impl", choices=("dots", "xla"), default="dots", help="U-Net model.conv_impl"
    )
    parser.add_argument(
        "--donate_state", action=argparse.BooleanOptionalAction, default=True, help="donate state"
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="also time forward, forward + backward, step"
    )
    return parser.parse_args()


def print_breakdown(args: argparse.Namespace, peaks: dict[str, peak_lib.Peak]) -> None:
    """Forward / forward + backward / whole step of each model and dtype (remat off)."""
    print(
        "\n| model | dtype | phase | GFLOPs (XLA) | ms | TFLOP/s | MFU | share of step time |"
        " load avg 1/5/15 min |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for key in args.models.split(","):
        for dtype in args.dtype.split(","):
            config = model_config(key, args.batch, dtype, **fast_paths(args))
            rows = phase_breakdown(config, args.steps)
            step_s = rows[-1][2]
            load = "/".join(f"{x:.1f}" for x in os.getloadavg())
            for phase, flops, seconds in rows:
                rate = flops / seconds
                print(
                    f"| {MODELS[key][0]} | {dtype} | {phase} | {flops / 1e9:.1f} | "
                    f"{1e3 * seconds:.0f} | {rate / 1e12:.4f} | "
                    f"{100 * rate / peaks[dtype].flops_per_s / jax.device_count():.1f}% | "
                    f"{100 * seconds / step_s:.0f}% | {load} |",
                    flush=True,
                )


def print_header(args: argparse.Namespace, peaks: dict[str, peak_lib.Peak], cached: int | None):
    device = jax.devices()[0]
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"command: python {' '.join(sys.argv)}")
    print(f"device: {device.device_kind} x{jax.device_count()}, {os.cpu_count()} host cores")
    print(f"jax {jax.__version__}; global batch {args.batch}, median of {args.steps} steps")
    print(
        f"attention_impl {args.attention_impl or 'None (JAX chooses)'}, "
        f"donate_state {args.donate_state}, U-Net conv_impl {args.conv_impl}"
    )
    for dtype, peak in peaks.items():
        print(
            f"peak {dtype}: {peak.flops_per_s / 1e12:.3f} TFLOP/s per device, {peak.source} "
            f"(matmul {peak.matmul_flops_per_s / 1e12:.3f}, "
            f"3x3 conv {peak.conv_flops_per_s / 1e12:.3f}); load avg {load}"
        )
    if cached is not None:
        print(f"compilation cache {args.compilation_cache}: {cached} entries at start")
    print(
        "\n| model | params | dtype | remat | lower s | compile s | compile s, after clear_caches |"
        " GFLOPs / step (XLA, executed) | step ms | examples/s | executed TFLOP/s |"
        " MFU (model FLOPs) | donated MiB | load avg 1/5/15 min |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def main() -> None:
    args = parse_args()
    cached_entries = compilation_cache.enable_compilation_cache(args.compilation_cache)
    dtypes = args.dtype.split(",")
    peaks = {dtype: peak_lib.peak_flops(dtype, args.peak_flops) for dtype in dtypes}
    print_header(args, peaks, cached_entries)
    remats = {"off": [False], "on": [True], "both": [False, True]}[args.remat]
    useful: dict[tuple[str, str], float] = {}  # (model, dtype) -> FLOPs per step without remat
    for key in args.models.split(","):
        for dtype in dtypes:
            for remat in remats:
                config = model_config(key, args.batch, dtype, remat, **fast_paths(args))
                m = measure_train_step(config, steps=args.steps, warmup=args.warmup)
                cached = recompile_seconds(config) if args.compilation_cache else None
                if not remat:
                    useful[key, dtype] = m.flops
                elif (key, dtype) not in useful:
                    useful[key, dtype] = model_flops(config, m.devices)
                mfu = useful[key, dtype] / m.step_s / (peaks[dtype].flops_per_s * m.devices)
                print(
                    f"| {MODELS[key][0]} | {m.params / 1e6:.1f}M | {dtype} | "
                    f"{'on' if remat else 'off'} | {m.lower_s:.1f} | {m.compile_s:.1f} | "
                    f"{'-' if cached is None else f'{cached:.1f}'} | "
                    f"{m.flops / 1e9:.1f} | {1e3 * m.step_s:.0f} | {m.examples_per_s:.2f} | "
                    f"{m.flops_per_s / 1e12:.4f} | {100 * mfu:.1f}% | {m.aliased_mib:.0f} | "
                    f"{'/'.join(f'{x:.1f}' for x in m.load)} |",
                    flush=True,
                )
    if args.breakdown:
        print_breakdown(args, peaks)
    print_flops_check({k: f / args.batch for (k, d), f in useful.items() if d == "float32"})


if __name__ == "__main__":
    main()
