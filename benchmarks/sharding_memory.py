"""Per-device memory of the compiled train step under data, FSDP and tensor parallelism.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/sharding_memory.py
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/sharding_memory.py --time

Nothing is allocated for the memory table: the step is lowered on abstract (shape-only) state and
compiled, and XLA's memory analysis gives, per device, the bytes of the arguments (train state +
batch), of the outputs and of temporaries (activations, gradients). `--time` also runs the step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sharding  # noqa: E402
from configs import cifar_ddpm, cifar_dit  # noqa: E402
from training import loop  # noqa: E402
from training.experiment import build_experiment  # noqa: E402

# name -> (data, fsdp, tensor, sequence_parallel)
MESHES = {
    "data=8": (8, 1, 1, False),
    "fsdp=8": (1, 8, 1, False),
    "data=2 fsdp=2 tensor=2": (2, 2, 2, False),
    "data=2 tensor=4": (2, 1, 4, False),
    "data=2 tensor=4 sequence_parallel": (2, 1, 4, True),
}


def model_configs(batch_size: int):
    """The CIFAR U-Net (35.7M) and DiT-B/2 on CIFAR pixels, at one global batch size."""
    unet = cifar_ddpm.get_config()
    dit = cifar_dit.get_config()
    dit.model.size = "B"
    for config in (unet, dit):
        config.batch_size = batch_size
    return {"CIFAR U-Net": unet, "DiT-B/2": dit}


def abstract_batch(experiment, batch_size: int):
    """A shape-only batch carrying its sharding."""
    batch_sharding = sharding.batch_sharding(experiment.mesh)
    size, channels = experiment.data.image_size, experiment.data.channels
    batch = {
        "image": jax.ShapeDtypeStruct(
            (batch_size, size, size, channels), jnp.float32, sharding=batch_sharding
        ),
        "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batch_sharding),
        "caption_id": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batch_sharding),
    }
    return batch


def measure(config, mesh_sizes, run: bool):
    """(argument, output, temp MiB per device, step seconds or None) for one config and mesh."""
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor, config.mesh.sequence_parallel = (
        mesh_sizes
    )
    experiment = build_experiment(config)
    state, shardings = loop.abstract_state(experiment)
    step = loop.make_train_step(experiment, shardings)
    batch = abstract_batch(experiment, config.batch_size)
    compiled = step.lower(state, batch, None).compile()
    memory = compiled.memory_analysis()
    mib = 1 / 2**20
    seconds = None
    if run:
        real_state, _ = loop.create_state(experiment, seed=0)
        real_batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype, device=s.sharding), batch)
        real_state, metrics = compiled(real_state, real_batch, None)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(3):
            real_state, metrics = compiled(real_state, real_batch, None)
        jax.block_until_ready(metrics)
        seconds = (time.perf_counter() - start) / 3
    return (
        memory.argument_size_in_bytes * mib,
        memory.output_size_in_bytes * mib,
        memory.temp_size_in_bytes * mib,
        seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--time", action="store_true", help="also run 3 steps and time them")
    parser.add_argument("--models", default="", help="comma-separated subset, e.g. DiT-B/2")
    parser.add_argument("--meshes", default="", help="comma-separated subset of the mesh names")
    parser.add_argument("--remat", action="store_true", help="model.remat = True")
    args = parser.parse_args()
    if jax.device_count() != 8:
        raise SystemExit("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    print(f"command: XLA_FLAGS={os.environ.get('XLA_FLAGS', '')} python {' '.join(sys.argv)}")
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, global batch {args.batch}\n")
    print(
        "| model | params | mesh | arguments MiB/device | outputs MiB/device | "
        "temporaries MiB/device | step s |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    chosen = lambda names, given: [n for n in names if not given or n in given.split(",")]  # noqa: E731
    configs = model_configs(args.batch)
    for name in chosen(configs, args.models):
        config = configs[name]
        config.model.remat = args.remat
        for mesh_name in chosen(MESHES, args.meshes):
            sizes = MESHES[mesh_name]
            arguments, outputs, temps, seconds = measure(config, sizes, args.time)
            params = sum(
                leaf.size
                for leaf in jax.tree.leaves(build_experiment(config).model.abstract_params)
            )
            timing = f"{seconds:.2f}" if seconds is not None else "-"
            print(
                f"| {name} | {params / 1e6:.1f}M | {mesh_name} | {arguments:.0f} | "
                f"{outputs:.0f} | {temps:.0f} | {timing} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
