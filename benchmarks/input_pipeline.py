"""Examples/s the input pipeline delivers against examples/s the train step consumes.

    python benchmarks/input_pipeline.py --steps=5       # digits and synthetic CIFAR-10, batch 8
    python benchmarks/input_pipeline.py --sources=digits --batches=200
    python benchmarks/input_pipeline.py --sources=cifar10_synthetic --models=unet --steps=5

Sources, both through `input_pipeline.pipeline.create_train_iterator`, with nothing downloaded:
- `digits`: scikit-learn's 8x8 digits (numpy indexing), against `configs/digits_ddpm.py`'s step.
- `cifar10_synthetic`: the real CIFAR-10 path (tfds TFRecords, PNG decode, per-epoch shuffle
  through a 10k buffer, flip, scale, batch, prefetch) on a tfds `cifar10` prepared here, offline,
  from random images written in CIFAR's binary format (`--synthetic_per_file` x 5 train images;
  input_pipeline/ has no tfds-free synthetic source), against the CIFAR U-Net and DiT-S/2 steps
  of `benchmarks/train_step.py`. Random pixels make the PNGs larger and slower to decode than
  real CIFAR images, so this rate is on the low side.
Delivered rate: `--batches` batches after `--warmup_batches` (which fill the shuffle buffer),
from the iterator alone and with `sharding.host_batch_to_global` (host -> device) included.
Pipeline and step are measured one after the other: in training they share the host's cores.
Target: the pipeline delivers >= 5x what the step consumes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sharding  # noqa: E402
from benchmarks import train_step as step_bench  # noqa: E402
from configs import digits_ddpm  # noqa: E402
from input_pipeline import pipeline  # noqa: E402
from training.experiment import build_experiment  # noqa: E402

TARGET_RATIO = 5.0


def pipeline_rate(batches: Iterator[dict], batch: int, count: int, warmup: int, mesh=None) -> float:
    """Examples/s over `count` batches after `warmup`; with `mesh`, each is also put on device."""
    for _ in itertools.islice(batches, warmup):
        pass
    start = time.perf_counter()
    for host_batch in itertools.islice(batches, count):
        if mesh is not None:
            jax.block_until_ready(sharding.host_batch_to_global(host_batch, mesh))
    return count * batch / (time.perf_counter() - start)


def prepare_synthetic_cifar(root: Path, per_file: int) -> str:
    """A tfds `cifar10` (5 x `per_file` train images of random pixels) prepared offline under
    `root` from files in CIFAR's binary format (label byte + CHW uint8); returns its data_dir."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    tfds.disable_progress_bar()
    folder = root / "raw" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, (per_file, 1), dtype=np.uint8)
        chw = rng.integers(0, 256, (per_file, 3 * 32 * 32), dtype=np.uint8)
        np.concatenate([labels, chw], 1).tofile(folder / name)
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    data_dir = str(root / "tfds")
    builder = tfds.builder("cifar10", data_dir=data_dir)
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", return_value=str(root / "raw")
    ):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return data_dir


def source_config(source: str, batch: int, data_dir: str = "") -> ml_collections.ConfigDict:
    """The config whose data section feeds the pipeline (the models are set per row)."""
    config = digits_ddpm.get_config() if source == "digits" else step_bench.model_config("unet", 1)
    config.batch_size = batch
    config.data.data_dir = data_dir
    return config


def measure_source(
    source: str, batch: int, count: int, warmup: int, data_dir: str = ""
) -> tuple[float, float]:
    """(examples/s from the iterator, examples/s including host -> device) of one source."""
    experiment = build_experiment(source_config(source, batch, data_dir))
    rates = []
    for mesh in (None, experiment.mesh):
        batches = pipeline.create_train_iterator(
            experiment.data,
            per_process_batch_size=batch // jax.process_count(),
            seed=0,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        rates.append(pipeline_rate(batches, batch, count, warmup, mesh))
    return rates[0], rates[1]


def step_configs(source: str, models: list[str], batch: int):
    """(row name, config) of the train steps this source feeds."""
    if source == "digits":
        return [("digits U-Net (digits_ddpm)", source_config(source, batch))]
    return [(step_bench.MODELS[m][0], step_bench.model_config(m, batch)) for m in models]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default="digits,cifar10_synthetic")
    parser.add_argument("--models", default="unet,dit", help="steps fed by cifar10_synthetic")
    parser.add_argument("--synthetic_per_file", type=int, default=2000, help="images per file")
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--batches", type=int, default=100, help="timed pipeline batches")
    parser.add_argument("--warmup_batches", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="timed train steps (median)")
    return parser.parse_args()


def print_header(args: argparse.Namespace) -> None:
    print(f"command: python {' '.join(sys.argv)}")
    device = jax.devices()[0]
    print(f"device: {device.device_kind} x{jax.device_count()}, {os.cpu_count()} host cores")
    print(
        f"jax {jax.__version__}; batch {args.batch}; pipeline: {args.batches} batches after "
        f"{args.warmup_batches}; step: median of {args.steps}\n"
    )
    print(
        "| source | delivered ex/s | delivered ex/s, on device | train step (config) |"
        " consumed ex/s | ratio | >= 5x | load avg 1/5/15 min |"
    )
    print("|---|---:|---:|---|---:|---:|---|---|")


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        data_dirs = {"digits": ""}
        if "cifar10_synthetic" in args.sources.split(","):  # tfds prints here, before the table
            data_dirs["cifar10_synthetic"] = prepare_synthetic_cifar(
                Path(workdir), args.synthetic_per_file
            )
        print_header(args)
        for source in args.sources.split(","):
            data_dir = data_dirs[source]
            delivered, on_device = measure_source(
                source, args.batch, args.batches, args.warmup_batches, data_dir
            )
            for name, config in step_configs(source, args.models.split(","), args.batch):
                consumed = step_bench.measure_train_step(config, steps=args.steps).examples_per_s
                ratio = on_device / consumed
                load = "/".join(f"{x:.1f}" for x in os.getloadavg())
                print(
                    f"| {source} | {delivered:.0f} | {on_device:.0f} | {name} | {consumed:.2f} | "
                    f"{ratio:.0f}x | {'yes' if ratio >= TARGET_RATIO else 'NO'} | {load} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
