"""--mode=compile's sampler chain: the run's chain compiled for the train step's devices, its
memory per device and its time estimated from one network evaluation."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import sharding
from diffusion import samplers
from training import loop, step_cost
from training.compiled_memory import (
    compile_or_out_of_memory,
    estimate_seconds,
    memory_from_error,
    peak_bytes,
    shape_only,
    shard_bytes,
)
from training.experiment import build_experiment
from training.run_config import RunConfig

if TYPE_CHECKING:
    from training.compile_run import CompiledStep


def sampler_report(
    config_dict: ml_collections.ConfigDict,
    step: CompiledStep,
    devices: list,
    hosts: int,
    hbm: float,
    peak: tuple[float, float] = (0.0, 0.0),
) -> dict[str, object]:
    """The run's sampler chain (sampler.*, EMA params laid out as in training) compiled for the
    same devices: its memory per device, and (TPU: `peak` FLOP/s and HBM bytes/s per device) its
    time as the network evaluations it makes times the estimate of one evaluation (of the
    loop-free twin: the chain is a scan); the final decode of latent runs is not in the time."""
    experiment = step.experiment
    sample_fn = loop.experiment_sample_fn(experiment, step.shardings.ema_params)
    key = jax.eval_shape(lambda: jax.random.key(0))
    arguments = sample_fn.chain_arguments(step.state.ema_params, key)
    grid, cond = arguments[2], arguments[3]
    start = time.perf_counter()
    chain, error = compile_or_out_of_memory(sample_fn.chain.lower(*shape_only(arguments)))
    seconds = time.perf_counter() - start
    arguments_bytes = shard_bytes(step.state.ema_params)
    memory = peak_bytes(chain) if chain else memory_from_error(error, arguments_bytes)
    evaluations = samplers.count_evaluations(grid, experiment.sampler.name)
    report = {
        "sampler": experiment.sampler.name,
        "num_steps": experiment.sampler.num_steps,
        "images": sample_fn.num_images,
        "network_evaluations": evaluations,
        "per_device_mib": {part: size / 2**20 for part, size in memory.items()},
        "fits": memory["peak"] <= hbm and chain is not None,
        "compiler_error": error,
        "seconds_to_compile": seconds,
    }
    if min(peak) > 0 and chain is not None:
        twin_run = RunConfig.from_configdict(
            step_cost.counting_twin(config_dict), len(devices), hosts
        )
        one = _compile_evaluation(twin_run, devices, sample_fn.padded_rows, cond)
        seconds, source, _, _ = estimate_seconds(step_cost.cost(one), *peak)
        report["estimate_source"] = source
        report["estimated_seconds_per_evaluation"] = seconds
        report["estimated_chain_seconds"] = seconds * evaluations
        report["estimated_images_per_second"] = (
            sample_fn.num_images / (seconds * evaluations) if seconds > 0 else None
        )
    return report


def _compile_evaluation(run: RunConfig, devices: list, rows: int, cond) -> jax.stages.Compiled:
    """One network evaluation of the chain (both guidance branches batched, as the sampler
    batches them) compiled for `devices`."""
    experiment = build_experiment(run, devices, shape_only_weights=True)
    _, shardings = loop.abstract_state(experiment, run.seed)
    params = experiment.model.abstract_params
    mesh = experiment.mesh
    batch_sharding = sharding.batch_sharding(mesh)
    if cond is not None:
        rows *= 2
        cond = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct((rows, *np.shape(leaf)[1:]), leaf.dtype), cond
        )
    x_t = jax.ShapeDtypeStruct((rows, *experiment.image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((rows,), jnp.float32)
    parallel = run.mesh.sequence_parallel

    def evaluate(params, x_t, t, kwargs):
        kwargs = dict(kwargs or {})
        if "concat" in kwargs:  # inpainting models' extra input channels
            x_t = jnp.concatenate([x_t, kwargs.pop("concat").astype(x_t.dtype)], axis=-1)
        with sharding.activation_constraints(mesh, parallel):
            return experiment.model.apply(params, x_t, t, **kwargs)

    jitted = jax.jit(
        evaluate,
        in_shardings=(shardings.ema_params, batch_sharding, batch_sharding, batch_sharding),
        out_shardings=batch_sharding,
    )
    return jitted.lower(params, x_t, t, cond).compile()
