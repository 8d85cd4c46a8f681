"""FLOPs of the compiled train step for benchmarks/train_step.py, and the counts they are checked
against.

XLA's cost analysis counts a loop body once, so a step with loops is counted on its "counting
twin" (the same arithmetic unrolled: blocks not scanned, models/conv.py's scanned kernel gradients
replaced by lax's convolutions), lowered on shape-only state and batch. The model FLOPs that MFU
counts are those of the step without remat. The checks: the issue's PyTorch count for the CIFAR
U-Net and a closed form (Kaplan et al.'s 6 N T plus attention) for the DiT's blocks.
"""

from __future__ import annotations

import jax
import ml_collections

import sharding
from benchmarks import peak as peak_lib
from benchmarks.step_inputs import MODELS, random_host_batch
from models.dit_config import SIZES
from training import loop
from training.experiment import build_experiment
from training.step_cost import counting_twin

# The figure for the 35.7M U-Net: forward + backward FLOPs per 32x32 image, counted by
# PyTorch's flop counter (convolutions, matmuls and attention only; 2 FLOPs per multiply-add).
UNET_REFERENCE_FLOPS_PER_IMAGE = 36.3e9


def dit_flops_per_image(depth: int, hidden: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    """Closed-form forward + backward FLOPs of a DiT's blocks per image (Kaplan et al.'s 6 N T):
    qkv, out and MLP kernels (4 + 2 mlp_ratio) h^2 per token at 2 FLOPs forward and 4 backward,
    plus the attention scores and values (4 T^2 h forward per block, times 3). Patch embedding,
    adaLN modulation (per image, not per token) and the final layer are left out."""
    kernels = (4 + 2 * mlp_ratio) * hidden**2 * depth
    return 6 * kernels * tokens + 3 * 4 * tokens**2 * hidden * depth


def lower_abstract_step(config: ml_collections.ConfigDict, devices=None) -> jax.stages.Lowered:
    """The step for `config` lowered on shape-only state and batch (nothing allocated)."""
    experiment = build_experiment(config, devices)
    state, shardings = loop.abstract_state(experiment)
    step = loop.make_train_step(experiment, shardings)
    batch_sharding = sharding.batch_sharding(experiment.mesh)
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
        random_host_batch(experiment, config.batch_size),
    )
    return step.lower(state, batch, experiment.frozen)


def step_flops(
    config: ml_collections.ConfigDict, compiled, num_devices: int, devices=None
) -> float:
    """FLOPs of one step summed over `num_devices` (XLA analyses the per-device program),
    counted on `counting_twin(config)` where the step has loops."""
    twin = counting_twin(config)
    if peak_lib.has_loops(compiled) and twin != config:
        compiled = lower_abstract_step(twin, devices).compile()
    return peak_lib.cost_flops(compiled) * num_devices


def model_flops(config: ml_collections.ConfigDict, num_devices: int, devices=None) -> float:
    """FLOPs of the step without rematerialisation (the model FLOPs MFU counts): compiled on
    shape-only inputs, so recomputed activations are not credited as useful work."""
    plain = ml_collections.ConfigDict(config.to_dict())
    plain.model.remat = False
    return step_flops(plain, lower_abstract_step(plain, devices).compile(), num_devices, devices)


def print_flops_check(per_image: dict[str, float]) -> None:
    """XLA's FLOPs per image against the issue's PyTorch count (U-Net) and a closed form (DiT)."""
    if "unet" in per_image:
        print(
            "\nU-Net FLOPs per 32x32 image, forward + backward (+ optimizer and EMA / batch): "
            f"XLA {per_image['unet'] / 1e9:.2f} G, the issue's PyTorch count "
            f"{UNET_REFERENCE_FLOPS_PER_IMAGE / 1e9:.1f} G: ratio "
            f"{per_image['unet'] / UNET_REFERENCE_FLOPS_PER_IMAGE:.3f}"
        )
    if "dit" in per_image:
        config = MODELS["dit"][1]()
        depth, hidden, _ = SIZES[config.model.size]
        tokens = (config.data.image_size // config.model.patch_size) ** 2
        closed = dit_flops_per_image(depth, hidden, tokens, config.model.mlp_ratio)
        print(
            "DiT-S/2 FLOPs per image, forward + backward (+ optimizer and EMA / batch): "
            f"XLA {per_image['dit'] / 1e9:.2f} G, closed form (blocks' matmuls) "
            f"{closed / 1e9:.2f} G: ratio {per_image['dit'] / closed:.3f}"
        )
