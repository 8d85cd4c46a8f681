"""Sampler speed: wall time per image, overhead over NFE bare forwards, compile time vs steps.

    python benchmarks/sampler_speed.py                       # all samplers, 20 steps, batch 16
    python benchmarks/sampler_speed.py --samplers=ddim,heun --steps=50

Timings are the minimum over repeats (robust to other processes on a shared machine); every
figure is measured after a warm-up call, so compile time is excluded except in the compile table.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peak import best_seconds as best_time  # noqa: E402
from diffusion import samplers, schedules  # noqa: E402
from models.functional import functionalize, init_params  # noqa: E402
from models.unet import UNet, UNetConfig  # noqa: E402


def build_network(image_size: int, base_channels: int):
    """A CIFAR-shaped U-Net, small enough for a CPU, with nonzero (perturbed) parameters."""
    config = UNetConfig(
        image_size=image_size,
        base_channels=base_channels,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(image_size // 2,),
        num_groups=8,
        dropout=0.0,
    )
    build = lambda rngs: UNet(config, rngs=rngs)  # noqa: E731
    params = init_params(build, 0)
    params = jax.tree.map(lambda p: p + 0.01, params)  # zero-init output convs would give 0
    return functionalize(build), params


def make_sampler(network, params, schedule, name: str, num_steps: int):
    """A jitted `params, x_T, key -> (samples, nfe)` for one sampler and step count.

    The step grid is an argument of the compiled chain, as in training/sampling.py, so its
    length is a shape, not a constant folded into the program.
    """
    grid = samplers.make_grid(name, num_steps, schedule=schedule, spacing="trailing")

    @jax.jit
    def chain(params, x_T, key, grid):
        denoise = samplers.make_denoiser(lambda x, t: network.apply(params, x, t), "eps")
        out = samplers.sample_on_grid(denoise, grid, x_T, key, sampler=name)
        return out.samples, out.nfe

    run = functools.partial(chain, grid=grid)
    run.lower = lambda params, x_T, key: chain.lower(params, x_T, key, grid)
    return run


def speed_table(network, params, schedule, names, num_steps, x_T, repeats):
    """Per sampler: NFE, seconds per image, overhead over NFE standalone forwards and over a
    scan of NFE forwards (the same loop with the sampler math removed)."""
    t = jnp.full((x_T.shape[0],), 500.0)
    forward = jax.jit(lambda p, x: network.apply(p, x, t))
    forward_s = best_time(forward, (params, x_T), repeats * 5)

    def forward_loop(p, x, n):
        return jax.lax.scan(lambda h, _: (network.apply(p, h, t), None), x, None, length=n)[0]

    rows = []
    loops: dict[int, Callable] = {}
    for name in names:
        run = make_sampler(network, params, schedule, name, num_steps)
        key = jax.random.key(0)
        nfe = int(run(params, x_T, key)[1])
        sampler_s = best_time(run, (params, x_T, key), repeats)
        if nfe not in loops:
            loops[nfe] = jax.jit(forward_loop, static_argnums=2)
        loop_s = best_time(loops[nfe], (params, x_T, nfe), repeats)
        rows.append((name, nfe, sampler_s, sampler_s / x_T.shape[0], forward_s, loop_s))
    return rows


def compile_table(network, params, schedule, names, step_counts, x_T):
    """Seconds to lower + compile each sampler's whole chain at each step count."""
    rows = []
    for name in names:
        seconds = []
        for steps in step_counts:
            run = make_sampler(network, params, schedule, name, steps)
            start = time.perf_counter()
            run.lower(params, x_T, jax.random.key(0)).compile()
            seconds.append(time.perf_counter() - start)
        rows.append((name, seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", default=",".join(samplers.SAMPLERS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile-samplers", default="ddim,heun,dpmpp_2m,unipc")
    parser.add_argument("--compile-steps", default="10,100,1000")
    args = parser.parse_args()

    names = args.samplers.split(",")
    for name in names:
        samplers.validate_sampler(name, args.steps, 1000)
    schedule = schedules.make_schedule("linear", 1000)
    network, params = build_network(args.image_size, args.base_channels)
    x_T = jax.random.normal(jax.random.key(1), (args.batch, args.image_size, args.image_size, 3))

    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} host cores"
    )
    print(f"jax {jax.__version__}; batch {args.batch}, {args.image_size}x{args.image_size}x3,")
    print(f"U-Net base {args.base_channels}, {args.steps} steps (trailing), min of repeats\n")
    print(
        "| sampler | NFE | chain s | ms / image | 1 forward ms | overhead vs NFE x forward |"
        " overhead vs scan of NFE forwards |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, nfe, chain_s, per_image, forward_s, loop_s in speed_table(
        network, params, schedule, names, args.steps, x_T, args.repeats
    ):
        print(
            f"| {name} | {nfe} | {chain_s:.3f} | {1e3 * per_image:.2f} | {1e3 * forward_s:.2f} | "
            f"{100 * (chain_s / (nfe * forward_s) - 1):+.1f}% | "
            f"{100 * (chain_s / loop_s - 1):+.1f}% |"
        )

    steps = [int(s) for s in args.compile_steps.split(",")]
    print(
        "\n| sampler | "
        + " | ".join(f"compile s, {s} steps" for s in steps)
        + f" | ratio {steps[-1]} / {steps[0]} |"
    )
    print("|---|" + "---:|" * (len(steps) + 1))
    for name, seconds in compile_table(
        network, params, schedule, args.compile_samplers.split(","), steps, x_T
    ):
        cells = " | ".join(f"{s:.2f}" for s in seconds)
        print(f"| {name} | {cells} | {seconds[-1] / seconds[0]:.2f}x |")


if __name__ == "__main__":
    main()
