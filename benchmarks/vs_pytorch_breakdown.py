"""`vs_pytorch.py --breakdown`: where the time goes on each side (the loss forward, forward +
backward, the eval forward) and the speed of one lone 3x3 conv in XLA and in PyTorch."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from benchmarks import peak
from benchmarks.contention import fmt_load, fmt_wait, waited
from benchmarks.train_step import experiment_loss, median_seconds
from models import conv as conv_kernels

if TYPE_CHECKING:
    from benchmarks.vs_pytorch import JaxSide, TorchSide


PHASES = ("loss forward (train mode)", "loss forward + backward", "network forward (eval)")


CONVS = ((128, 32), (256, 16))  # (channels, side) of the U-Net's first two levels' 3x3 convs


def jax_phases(ours: JaxSide) -> dict[str, Callable[[], object]]:
    """Our loss forward (train mode), its forward + backward, and one eval forward of the
    network (what each sampling step runs), each jitted on its own, as no-argument calls."""
    experiment = ours.experiment
    loss = experiment_loss(experiment)

    def network(params, x):
        return experiment.model.apply(params, x, jnp.full((x.shape[0],), 500))

    args = (ours.state.params, ours.batch, jax.random.key(0))
    forward, backward, eval_forward = jax.jit(loss), jax.jit(jax.grad(loss)), jax.jit(network)
    calls = (
        lambda: forward(*args),
        lambda: backward(*args),
        lambda: eval_forward(ours.sample_params, ours.x),
    )
    return dict(zip(PHASES, calls, strict=True))


def torch_phases(theirs: TorchSide) -> dict[str, Callable[[], object]]:
    """The same three phases on the PyTorch side (the eval forward under no_grad)."""
    torch, unet, x0 = theirs.torch, theirs.unet, theirs.x0
    t = torch.randint(0, 1000, (x0.shape[0],))

    def loss():
        unet.train()
        return torch.nn.functional.mse_loss(unet(x0, t).sample, x0)

    def backward():
        loss().backward()
        unet.zero_grad(set_to_none=True)

    def forward_eval():
        unet.eval()
        with torch.no_grad():
            return unet(x0, torch.full((x0.shape[0],), 500))

    return dict(zip(PHASES, (loss, backward, forward_eval), strict=True))


def conv_calls(batch: int, side: int, channels: int, torch) -> dict[str, Callable[[], object]]:
    """One 3x3 conv (channels -> channels, side x side): forward, and forward + backward to
    input and kernel, in XLA (NHWC; lax's kernel gradient and models/conv.py's), and PyTorch
    (NCHW, its default, and channels_last)."""
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (batch, side, side, channels))  # [B, H, W, C]
    kernel = 0.05 * jax.random.normal(kw, (3, 3, channels, channels))
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(peak.conv3x3(x, k) * x), argnums=(0, 1)))
    forward = jax.jit(peak.conv3x3)
    dots_grad = jax.jit(
        jax.grad(lambda x, k: jnp.sum(conv_kernels.conv3x3_same(x, k) * x), argnums=(0, 1))
    )
    calls = {
        "XLA NHWC": (lambda: forward(x, kernel), lambda: grad(x, kernel)),
        "XLA NHWC, conv_impl=dots": (lambda: forward(x, kernel), lambda: dots_grad(x, kernel)),
    }
    for name, fmt in (("PyTorch NCHW", torch.contiguous_format), ("PyTorch NHWC", None)):
        fmt = fmt or torch.channels_last
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(memory_format=fmt)
        tx = torch.randn(batch, channels, side, side).contiguous(memory_format=fmt)
        tx.requires_grad_(True)

        def run(conv=conv, tx=tx):
            with torch.no_grad():
                return conv(tx)

        def backward(conv=conv, tx=tx):
            (conv(tx) * tx).sum().backward()

        calls[name] = (run, backward)
    return calls


def print_breakdown(ours: JaxSide, theirs: TorchSide, batch: int, repeats: int) -> None:
    """Where the time goes: forward vs backward on each side (alternating per phase), and the
    speed of a lone conv, forward and forward + backward, in each library."""
    print(f"\n### Breakdown, batch {batch}, median of {repeats} after a warm-up call\n")
    print("| phase | JAX ms | PyTorch ms | PyTorch / JAX time | load avg 1/5/15 | CPU wait |")
    print("|---|---:|---:|---:|---|---:|")
    jax_calls, torch_calls = jax_phases(ours), torch_phases(theirs)
    for name in PHASES:
        (ours_s, theirs_s), wait = waited(
            lambda name=name: [
                median_seconds(c[name], (), repeats) for c in (jax_calls, torch_calls)
            ]
        )
        print(
            f"| {name} | {1e3 * ours_s:.0f} | {1e3 * theirs_s:.0f} | {theirs_s / ours_s:.2f} | "
            f"{fmt_load(os.getloadavg())} | {fmt_wait(wait)} |"
        )
    sizes = " | ".join(f"{c} ch {s}x{s}, fwd / fwd+bwd" for c, s in CONVS)
    print(f"\n| 3x3 conv, batch {batch}, GFLOP/s | {sizes} |")
    print("|---|" + "---:|" * len(CONVS))
    table, wait = waited(lambda: conv_table(batch, theirs.torch, repeats))
    for name, cells in table.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"load avg {fmt_load(os.getloadavg())}, CPU wait {fmt_wait(wait)}")


def conv_table(batch: int, torch, repeats: int) -> dict[str, list[str]]:
    """Per library, "forward / forward + backward" GFLOP/s cells, one per size in CONVS."""
    table: dict[str, list[str]] = {}
    for channels, side in CONVS:
        flops = peak.conv3x3_same_flops(batch, side, side, channels, channels)
        for name, (forward, backward) in conv_calls(batch, side, channels, torch).items():
            rates = (
                flops / median_seconds(forward, (), repeats),
                3 * flops / median_seconds(backward, (), repeats),
            )
            table.setdefault(name, []).append(" / ".join(f"{r / 1e9:.0f}" for r in rates))
    return table
