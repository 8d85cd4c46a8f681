"""What a step costs as XLA counts it: the counting twin of a config, and its model FLOPs.

XLA's cost analysis (FLOPs, bytes accessed, and on TPU the compiler's `optimal_seconds`) counts a
while loop's body once, not once per trip: a `lax.scan` over 28 DiT blocks is counted as one
block, and libtpu's `optimal_seconds` for a program with loops is not a time at all (negative,
measured with jax 0.10.2 / libtpu 0.0.42.1). The counting twin is the same arithmetic with the
loops unrolled: blocks not scanned, models/conv.py's scanned kernel gradients replaced by lax's
convolutions, gradient accumulation's micro-batches as one batch.
"""

from __future__ import annotations

import jax
import ml_collections

from training import loop
from training.experiment import build_experiment
from training.run_config import RunConfig


def counting_twin(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with its loops unrolled (see module); equal to `config` when it has none."""
    twin = ml_collections.ConfigDict(config.to_dict())
    if twin.model.get("use_scan", False):
        twin.model.use_scan = False
    if twin.model.get("conv_impl", "xla") != "xla":
        twin.model.conv_impl = "xla"
    if twin.get("training", {}).get("grad_accumulation_steps", 1) != 1:
        twin.training.grad_accumulation_steps = 1
    return twin


def has_loops(compiled: jax.stages.Compiled) -> bool:
    """Whether the optimised HLO has a while loop (whose cost the analysis counts once)."""
    return " while(" in compiled.as_text()


def cost(compiled: jax.stages.Compiled) -> dict[str, float]:
    """XLA's cost analysis of one compiled program (per device under SPMD) as a plain dict."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older JAX: one dict per program
        analysis = analysis[0]
    return {key: float(value) for key, value in (analysis or {}).items()}


def model_flops(config: ml_collections.ConfigDict) -> float:
    """FLOPs of one global train step without rematerialisation: the work MFU credits.

    The counting twin with remat off is lowered for one local device on shape-only state and
    batch, and XLA's cost analysis of the unoptimised program counts it: forward and backward
    of the network, the frozen encoders' forward passes, the optimizer and EMA updates.
    Nothing is compiled, so this is quick even for the largest configs."""
    from training import compile_run  # noqa: PLC0415 (compile_run imports this module)

    plain = counting_twin(config)
    if "remat" in plain.model:
        plain.model.remat = False
    if plain.model.get("attention_impl") == "pallas_tpu":  # a TPU kernel; the same FLOPs
        plain.model.attention_impl = None
    for axis in ("data", "fsdp", "tensor"):
        if axis in plain.mesh:
            plain.mesh[axis] = 1
    device = jax.devices("cpu")[:1]
    run = RunConfig.from_configdict(plain, 1, 1)
    experiment = build_experiment(run, device, shape_only_weights=True)
    state, shardings = loop.abstract_state(experiment, run.seed)
    step = loop.make_train_step(experiment, shardings)
    batch = compile_run.abstract_batch(experiment, run.batch_size)
    frozen = experiment.frozen
    if frozen is not None:
        frozen = compile_run.abstract_tree(frozen, experiment.mesh)
    lowered = step.lower(state, batch, frozen)
    return float(lowered.cost_analysis()["flops"])
