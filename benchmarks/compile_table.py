"""docs/scaling.md's table: the train step of the headline models compiled for TPU slices on
this CPU (--mode=compile's report per model x slice), as compiler estimates, not measurements.

    python -m benchmarks.compile_table --out=runs/compile_table            # every row
    python -m benchmarks.compile_table --models=dit_xl2 --topologies=v5e-8 # some of them

Each report is also written to <out>/<model>/<topology>.json; rows already there are read back
instead of compiled again, so the command can be stopped and continued.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable

import ml_collections
from absl import app, flags

from configs import cifar_ddpm, imagenet_latent_dit, sd_pretrained
from errors import ConfigError

TOPOLOGIES = ("v5e-8", "v5e-64", "v5e-256", "v4-32", "v5p-128")
# The DiT paper's TPU v3-256 pod figure: 5.7 training iterations/s of DiT-XL/2 at batch 256.
DIT_PAPER_ITERATIONS_PER_SECOND = 5.7
V3_POD_256_PEAK_FLOPS = 256 / 2 * 123e12  # v3-256: 128 chips of 123 TFLOP/s bf16


def _cifar_unet(devices: int) -> ml_collections.ConfigDict:
    del devices  # data parallel over every device, as the config says
    return cifar_ddpm.get_config()


def _dit(
    size: str, fsdp: bool, image_size: int = 256, batch: int = 256
) -> Callable[[int], ml_collections.ConfigDict]:
    def config(devices: int) -> ml_collections.ConfigDict:
        dit = imagenet_latent_dit.get_config()  # 256 px through the SD VAE, batch 256
        dit.model.size = size
        dit.data.image_size, dit.batch_size = image_size, batch
        if fsdp:  # the state split over (up to) the 8 chips of a host, data parallel across
            dit.mesh.data, dit.mesh.fsdp = -1, min(8, devices)
        return dit

    return config


def _sd_unet(devices: int) -> ml_collections.ConfigDict:
    """SD 1.5 fine-tuning at 512 px: FSDP over (up to) 8 devices, remat, 2 images per device."""
    config = sd_pretrained.get_config()
    config.mesh.data, config.mesh.fsdp = -1, min(8, devices)
    config.batch_size = 2 * devices
    return config


# name -> (row label, config factory for a slice of that many devices)
MODELS: dict[str, tuple[str, Callable[[int], ml_collections.ConfigDict]]] = {
    "cifar_unet": ("CIFAR DDPM U-Net (35.7M), 32 px, batch 128", _cifar_unet),
    "dit_b2": ("DiT-B/2 (130M), 256 px via SD VAE, batch 256", _dit("B", fsdp=False)),
    "dit_xl2": ("DiT-XL/2 (675M), 256 px via SD VAE, batch 256", _dit("XL", fsdp=True)),
    # 512 px: 64x64 latents, 1024 tokens, where attention is long enough for pallas_tpu to matter
    "dit_b2_512": ("DiT-B/2, 512 px via SD VAE, batch 64", _dit("B", False, 512, 64)),
    "sd15_unet": ("SD 1.5 U-Net (860M), 512 px, 2 per device", _sd_unet),
}

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/compile_table", "Where the per-row JSON reports go.")
flags.DEFINE_list("models", list(MODELS), f"Rows: {', '.join(MODELS)}.")
flags.DEFINE_list("topologies", list(TOPOLOGIES), "Slices (JAX or Cloud names).")
flags.DEFINE_list("attention", ["default"], "model.attention_impl values: default, pallas_tpu.")
flags.DEFINE_list(
    "configs",
    [],
    "Instead of --models: config files as they are (train step and sampler chain), e.g. "
    "configs/digits_ddpm.py,configs/cifar_dit.py: does every config build for the slice.",
)


def row_report(
    model: str, topology: str, attention: str, out: str, remat: bool = False
) -> dict[str, object]:
    """The compile report of one row, read from `out` when an earlier run wrote it."""
    from training import compile_run, stand_ins, tpu_topologies  # noqa: PLC0415

    suffix = ("" if attention == "default" else f"_{attention}") + ("_remat" if remat else "")
    path = os.path.join(
        out, os.path.basename(model).removesuffix(".py"), f"{topology}{suffix}.json"
    )
    if os.path.exists(path):
        with open(path) as file:
            return json.load(file)
    name, _ = tpu_topologies.resolve(topology)
    if model.startswith("configs/"):
        module = importlib.import_module(model.removesuffix(".py").replace("/", "."))
        config = module.get_config()
    else:
        config = MODELS[model][1](len(tpu_topologies.topology_devices(name)))
    if attention != "default":
        config.model.attention_impl = attention
    if remat:  # the first switch a step that does not fit tries (compile_run.memory_switches)
        config.model.remat = True
    config, _ = stand_ins.substitute(config, os.path.join(out, "stand_ins"))
    start = time.perf_counter()
    sampler = model.startswith("configs/")
    report = compile_run.compile_report(config, topology, sampler=sampler)
    report["wall_seconds"] = time.perf_counter() - start
    report["remat"] = bool(config.model.get("remat", False))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        json.dump(report, file, indent=2, default=str)
    return report


def _figure(value: float) -> str:
    """Three significant figures at most, no exponent: 983, 1.92, 0.0234."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def table_line(label: str, topology: str, attention: str, report: dict[str, object]) -> str:
    """One markdown row: slice, layout, HBM per chip, fits, step time, images/s, MFU."""
    memory = report["per_device_mib"]
    mesh = "x".join(f"{axis}{size}" for axis, size in report["mesh"].items() if size > 1)
    step = report["estimated_step_seconds"]
    timing = (
        f"{_figure(step * 1e3)} ms | {report['estimated_images_per_second']:.0f} | "
        f"{100 * report['estimated_mfu']:.1f}%"
        if step and step > 0
        else "n/a | n/a | n/a"
    )
    impl = "" if attention == "default" else f" ({attention})"
    return (
        f"| {label}{impl} | {topology} ({report['chips']} chips) | {mesh or 'replicated'} | "
        f"{memory['peak'] / 1024:.1f} / {memory['hbm'] / 1024:.0f} GiB | "
        f"{'yes' if report['fits'] else 'NO'} | {timing} | "
        f"{_figure(report['model_flops_per_image'] / 1e9)} |"
    )


def main(argv: list[str]) -> None:
    del argv
    print(
        "Commands: python -m benchmarks.compile_table "
        + " ".join(
            f"--{name}={','.join(value) if isinstance(value, list) else value}"
            for name, value in (
                ("out", FLAGS.out),
                ("configs", FLAGS.configs) if FLAGS.configs else ("models", FLAGS.models),
                ("topologies", FLAGS.topologies),
                ("attention", FLAGS.attention),
            )
        )
    )
    sampler_column = " sampler chain |" if FLAGS.configs else ""
    print(
        "\n| model | slice | layout | peak HBM per device / HBM | fits | step (est.) | "
        "images/s (est.) | MFU (est.) | model GFLOP per image |" + sampler_column
    )
    print("| --- " * (10 if FLAGS.configs else 9) + "|")
    for config_file in FLAGS.configs:
        for topology in FLAGS.topologies:
            report = row_report(config_file, topology, "default", FLAGS.out)
            line = table_line(config_file, topology, "default", report)
            chain = report.get("sampler")
            if chain:
                line += f" sampler {chain['per_device_mib']['peak']:.0f} MiB, " + (
                    "fits |" if chain["fits"] else "DOES NOT FIT |"
                )
            else:  # the step does not fit (compile_run.compile_report) or a latent run
                line += " not compiled |"
            print(line, flush=True)
    for model in [] if FLAGS.configs else FLAGS.models:
        for topology in FLAGS.topologies:
            for attention in FLAGS.attention:
                try:
                    report = row_report(model, topology, attention, FLAGS.out)
                except ConfigError as error:  # e.g. a batch smaller than the slice's devices
                    print(f"| {MODELS[model][0]} | {topology} | {error} |", flush=True)
                    continue
                print(table_line(MODELS[model][0], topology, attention, report), flush=True)
                if not report["fits"] and not report["remat"]:
                    report = row_report(model, topology, attention, FLAGS.out, remat=True)
                    label = MODELS[model][0] + " + remat"
                    print(table_line(label, topology, attention, report), flush=True)


if __name__ == "__main__":
    app.run(main)
