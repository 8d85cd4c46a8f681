"""The same U-Net in JAX (this repo) and PyTorch (diffusers): train examples/s, DDIM images/s.

    python benchmarks/vs_pytorch.py                           # batch 8, 3 rounds, 50 DDIM steps
    python benchmarks/vs_pytorch.py --rounds=1 --train_steps=2 --sample_steps=5     # smoke run
    python benchmarks/vs_pytorch.py --base_channels=32 --skip_sample --breakdown    # narrower

Our side is `configs/cifar_ddpm.py` run by the repo's own code: the train step of
`training.loop.make_train_step` (clip by global norm, Adam, EMA; the state donated) and the scanned
DDIM chain of `training.sampling.make_sample_fn`, built as `training/loop.py` builds them. The
PyTorch side is diffusers' `UNet2DModel` configured from the same config (`diffusers_unet_config`;
the parameter counts are checked equal, 35,746,307 at full size) and trained with the same update
on the same batch: t ~ U{0..999}, eps ~ N(0, I), x_t from the same linear DDPM schedule, MSE on
eps, dropout 0.1 on, clip_grad_norm_(1.0), torch.optim.Adam, EMA 0.9999. Sampling is
`DDIMPipeline` (its own Python loop over the steps under no_grad) with a DDIMScheduler set to our
sampler's grid (trailing spacing, eta 0, x0 clipped to [-1, 1]); ours is one jitted `lax.scan`.

The two sides run in one process and take turns (`--rounds` of JAX block, PyTorch block), so slow
drift in machine load hits both; every block records `os.getloadavg()` and its "CPU wait": the
share of its wall time some task waited for a CPU (Linux PSI, /proc/pressure/cpu). Read only
blocks with a CPU wait near 0: PyTorch's OpenMP threads wait for each other at every op, so
another process on one of the cores slows PyTorch far more than XLA (10x vs 2-3x was seen on 2
cores), which inflates the ratio; blocks over 10% are flagged. Train figures are medians of all
timed steps, sampling figures medians of all timed calls (bests beside), each after untimed
warm-up (JAX's first call compiles; its time is printed separately). FLOPs per image are
PyTorch's flop counter on the diffusers network (2 per multiply-add), for both sides' GFLOP/s.

Known differences that do not change the work done: stride-2 downsampling pads TensorFlow-style
(0 before, 1 after) in ours, (1, 1) in diffusers; diffusers' conv / norm init differs from ours
(the sampling weights here are random on both sides, so no zero-initialised conv is timed);
PyTorch runs NCHW as diffusers does by default, with `torch.set_num_threads(os.cpu_count())`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sharding  # noqa: E402
from benchmarks.contention import fmt_load, fmt_seconds, fmt_wait, timed, waited  # noqa: E402
from benchmarks.diffusers_unet import diffusers_unet, torch_param_count, unet_config  # noqa: E402
from benchmarks.train_step import random_host_batch  # noqa: E402
from benchmarks.vs_pytorch_breakdown import print_breakdown  # noqa: E402
from configs import cifar_ddpm  # noqa: E402
from models.functional import count_params  # noqa: E402
from models.unet import UNetConfig  # noqa: E402
from training import loop  # noqa: E402
from training.experiment import Experiment, build_experiment  # noqa: E402

TRAIN_TARGET = 1.25  # issue 7: our examples/s over PyTorch's, same batch
SAMPLE_TARGET = 1.2  # issue 7: our DDIM images/s over diffusers' pipeline loop, same steps
CONTENDED = 0.1  # a block whose CPU wait (see `cpu_stall_us`) exceeds this is flagged


def bench_config(
    batch: int,
    sample_steps: int,
    base_channels: int | None = None,
    conv_impl: str = "dots",
    donate_state: bool = False,
):
    """configs/cifar_ddpm.py at one global batch, sampling `batch` images with DDIM, with this
    CPU's fast paths by default: `conv_impl` "dots" (models/conv.py; "xla": lax convolutions)
    and no state donation (the step is about 11% faster on CPU without it; docs/PERFORMANCE.md)."""
    config = cifar_ddpm.get_config()
    config.batch_size = batch
    config.model.conv_impl = conv_impl
    config.training.donate_state = donate_state
    if base_channels:
        config.model.base_channels = base_channels
    config.sampler.name = "ddim"
    config.sampler.num_steps = sample_steps
    config.sampler.max_steps = 0
    config.sampler.spacing = "trailing"
    config.sampler.eta = 0.0
    config.sampler.thresholding = "static"
    config.sampler.num_samples = batch
    return config


class JaxSide:
    """The repo's train step and scanned DDIM sampler on a random CIFAR-shaped batch."""

    def __init__(self, experiment: Experiment, host_batch: dict[str, np.ndarray], seed: int = 0):
        self.experiment = experiment
        self.state, shardings = loop.create_state(experiment, seed=seed)
        self.step = loop.make_train_step(experiment, shardings)
        self.batch = sharding.host_batch_to_global(host_batch, experiment.mesh)
        self.sample_fn = loop.experiment_sample_fn(experiment, shardings.ema_params)
        # Random weights (drawn on the host: a jitted draw per leaf costs compile time), so no
        # all-zero conv (ours zero-initialises each block's last conv) is what gets timed.
        rng = np.random.default_rng(seed)
        noisy = jax.tree.map(
            lambda p: np.asarray(p) + 0.02 * rng.standard_normal(p.shape).astype(np.float32),
            self.state.ema_params,
        )
        self.sample_params = jax.device_put(noisy, shardings.ema_params)
        self.x = self.batch["image"]

    def train(self) -> float:
        self.state, metrics = self.step(self.state, self.batch, self.experiment.frozen)
        return float(jax.block_until_ready(metrics["loss"]))

    def sample(self) -> np.ndarray:
        return self.sample_fn(self.sample_params, jax.random.key(0))


class TorchSide:
    """diffusers' UNet2DModel trained with the same update, sampled by DDIMPipeline."""

    def __init__(self, experiment: Experiment, model: UNetConfig, images: np.ndarray, seed=0):
        import torch  # noqa: PLC0415 (test-only dependency)
        from diffusers import DDIMPipeline, DDIMScheduler  # noqa: PLC0415

        self.torch = torch
        torch.manual_seed(seed)
        self.unet = diffusers_unet(model)
        self.params = [p for p in self.unet.parameters()]
        opt = experiment.run.optimizer
        self.optimizer = torch.optim.Adam(
            self.params, lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps
        )
        self.clip, self.ema_decay = opt.grad_clip_norm, opt.ema_decay
        self.ema = [p.detach().clone() for p in self.params]
        self.x0 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # [B, C, H, W]
        alpha_bar = torch.from_numpy(np.array(experiment.schedule.alphas_cumprod))
        self.signal, self.noise_scale = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
        sampler, schedule = experiment.sampler, experiment.schedule
        # Every argument explicit (diffusers' schedulers do not share defaults), our betas.
        scheduler = DDIMScheduler(
            num_train_timesteps=schedule.num_timesteps,
            trained_betas=np.asarray(schedule.betas),
            prediction_type="epsilon",
            clip_sample=sampler.thresholding == "static",
            clip_sample_range=1.0,
            set_alpha_to_one=True,
            steps_offset=0,
            timestep_spacing=sampler.spacing,
        )
        self.pipeline = DDIMPipeline(unet=self.unet, scheduler=scheduler)
        self.pipeline.set_progress_bar_config(disable=True)
        self.num_samples, self.num_steps, self.eta = len(images), sampler.num_steps, sampler.eta

    def train(self) -> float:
        torch, x0 = self.torch, self.x0
        self.unet.train()  # dropout on, as ours
        t = torch.randint(0, len(self.signal), (x0.shape[0],))
        noise = torch.randn_like(x0)
        x_t = self.signal[t].view(-1, 1, 1, 1) * x0 + self.noise_scale[t].view(-1, 1, 1, 1) * noise
        loss = torch.nn.functional.mse_loss(self.unet(x_t, t).sample, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_decay)
        return loss.item()

    def sample(self) -> np.ndarray:
        self.unet.eval()  # a directly built UNet2DModel is in train mode: dropout would be on
        return self.pipeline(
            batch_size=self.num_samples,
            generator=self.torch.Generator().manual_seed(0),
            eta=self.eta,
            num_inference_steps=self.num_steps,
            output_type="np",
        ).images

    def flops_per_image(self) -> tuple[float, float]:
        """(forward, forward + backward) FLOPs of one 32x32 image, PyTorch's flop counter."""
        from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

        x, t = self.x0[:1], self.torch.tensor([500])
        with FlopCounterMode(display=False) as counter:
            with self.torch.no_grad():
                self.unet(x, t)
        forward = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            self.unet(x, t).sample.sum().backward()
        self.unet.zero_grad(set_to_none=True)
        return float(forward), float(counter.get_total_flops())


@dataclasses.dataclass(frozen=True)
class Block:
    """One side's timed calls in one round, and how busy the machine was meanwhile."""

    round: int
    side: str
    seconds: list[float]
    load: tuple[float, float, float]  # os.getloadavg() at the end of the block
    pressure: float | None  # share of the block's wall time some task waited for a CPU


def alternate(
    sides: dict[str, Callable[[], object]], rounds: int, calls: int, warmup: int
) -> tuple[dict[str, float], list[Block]]:
    """`warmup` untimed calls of each side (the first call's seconds are returned: JAX's
    compile), then `rounds` x (each side's `calls` timed calls in turn)."""
    first = {}
    for name, fn in sides.items():
        first[name] = timed(fn)
        for _ in range(warmup - 1):
            fn()
    blocks = []
    for round_index in range(1, rounds + 1):
        for name, fn in sides.items():
            seconds, pressure = waited(lambda fn=fn: [timed(fn) for _ in range(calls)])
            blocks.append(Block(round_index, name, seconds, os.getloadavg(), pressure))
            print(f"  round {round_index} {name}: {fmt_seconds(seconds)}", flush=True)
    return first, blocks


def report(title, unit, per_call, first, blocks: list[Block], flops_per_unit, target) -> None:
    """Per-block rates, then per side the median and best over all timed calls; the ratio of
    medians is the headline, the ratio of bests the one least hurt by bursts of other load."""
    print(f"\n### {title}\n")
    print(f"| round | side | {unit}/s (block median) | s per call | load avg 1/5/15 | CPU wait |")
    print("|---:|---|---:|---|---|---:|")
    for b in blocks:
        rate = per_call / statistics.median(b.seconds)
        print(
            f"| {b.round} | {b.side} | {rate:.3f} | {fmt_seconds(b.seconds)} | "
            f"{fmt_load(b.load)} | {fmt_wait(b.pressure)} |"
        )
    print(f"\n| side | first call s | median s | best s | {unit}/s (median) | GFLOP/s (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    medians, bests = {}, {}
    for name in first:
        seconds = [s for b in blocks if b.side == name for s in b.seconds]
        medians[name], bests[name] = statistics.median(seconds), min(seconds)
        rate = per_call / medians[name]
        print(
            f"| {name} | {first[name]:.1f} | {medians[name]:.3f} | {bests[name]:.3f} | "
            f"{rate:.3f} | {rate * flops_per_unit / 1e9:.1f} |"
        )
    contended = [b for b in blocks if b.pressure is not None and b.pressure > CONTENDED]
    if contended:
        print(
            f"\nWARNING: {len(contended)} of {len(blocks)} blocks had a task waiting for a CPU "
            f"more than {100 * CONTENDED:.0f}% of the time (other processes): ratios unreliable."
        )
    ratio = medians["PyTorch"] / medians["JAX"]
    print(
        f"\nratio JAX / PyTorch {unit}/s: {ratio:.3f} of medians "
        f"(target >= {target}: {'met' if ratio >= target else 'NOT met'}"
        f"{'; contended, rerun on a quiet machine' if contended else ''}), "
        f"{bests['PyTorch'] / bests['JAX']:.3f} of bests"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="train batch = images per sample call")
    parser.add_argument("--rounds", type=int, default=3, help="alternations JAX, PyTorch")
    parser.add_argument("--train_steps", type=int, default=5, help="timed steps per side per round")
    parser.add_argument("--sample_steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--sample_calls", type=int, default=1, help="timed calls per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls (JAX: compiles)")
    parser.add_argument("--base_channels", type=int, default=0, help="0: the config's 128")
    parser.add_argument("--conv_impl", choices=("dots", "xla"), default="dots", help="ours")
    parser.add_argument(
        "--donate_state", action=argparse.BooleanOptionalAction, default=False, help="ours"
    )
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--skip_sample", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="forward / backward / conv times")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch  # noqa: PLC0415 (test-only dependency)

    torch.set_num_threads(os.cpu_count())
    config = bench_config(args.batch, args.sample_steps, args.base_channels or None, args.conv_impl)
    experiment = build_experiment(config, jax.devices()[:1])
    model = unet_config(config)
    host_batch = random_host_batch(experiment, args.batch)
    ours = JaxSide(experiment, host_batch)
    theirs = TorchSide(experiment, model, host_batch["image"])
    ours_n, theirs_n = (
        count_params(experiment.model.abstract_params),
        torch_param_count(theirs.unet),
    )
    forward_flops, train_flops = theirs.flops_per_image()

    print(f"command: python {' '.join(sys.argv)}")
    device, load = jax.devices()[0].device_kind, fmt_load(os.getloadavg())
    print(f"device: {device} x1, {os.cpu_count()} host cores (shared), load avg {load} at start")
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(
        f"U-Net base {model.base_channels}: params ours {ours_n:,}, diffusers {theirs_n:,}", end=""
    )
    print(f" (difference {ours_n - theirs_n})")
    print(f"ours: model.conv_impl={args.conv_impl!r}, training.donate_state={args.donate_state}")
    print(f"PyTorch flop counter per image: forward {forward_flops / 1e9:.2f} G, ", end="")
    print(f"forward + backward {train_flops / 1e9:.2f} G")
    if not args.skip_train:
        print(f"\ntrain: batch {args.batch}, {args.rounds} rounds x {args.train_steps} steps")
        sides = {"JAX": ours.train, "PyTorch": theirs.train}
        first, blocks = alternate(sides, args.rounds, args.train_steps, args.warmup)
        title = "Train step (clip + Adam + EMA)"
        report(title, "examples", args.batch, first, blocks, train_flops, TRAIN_TARGET)
    if not args.skip_sample:
        print(
            f"\nsample: {args.batch} images, DDIM {args.sample_steps} steps, {args.rounds} rounds"
        )
        sides = {"JAX": ours.sample, "PyTorch": theirs.sample}
        first, blocks = alternate(sides, args.rounds, args.sample_calls, args.warmup)
        title, flops = (
            f"DDIM sampling, {args.sample_steps} steps",
            forward_flops * args.sample_steps,
        )
        report(title, "images", args.batch, first, blocks, flops, SAMPLE_TARGET)
    if args.breakdown:
        print_breakdown(ours, theirs, args.batch, max(3, args.train_steps))
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
