"""--mode=compile: the run's real train step and sampler chain compiled for a TPU slice it does
not have.

    python main.py --mode=compile --config=configs/cifar_ddpm.py --workdir=runs/plan \\
        --config.compile.topology=v5e-64

The experiment is built exactly as a training run builds it (config.mesh over the slice's
devices, the same logical rules, shardings, dtype, remat and accumulation) on abstract inputs,
frozen weights read as shapes only (training/stand_ins.py when their folder is missing), and
XLA's TPU compiler (libtpu, no TPU attached) compiles the step and the chain. Reported per
device: the train state's bytes by part, XLA's argument / temporary / output bytes and the peak
they add up to against the chip's HBM; the model FLOPs (training/step_cost.py), the compiler's
FLOPs and bytes accessed, and an estimated step time (`optimal_seconds`, else the roofline of the
compiler's counts; of the loop-free twin when the step has loops, and then only for a step that
fits) with the images/s and MFU it implies: compiler estimates, not measurements; the
collectives in the compiled step. Written to `<workdir>/compile/<topology>.json`. A step that
does not fit is reported without its sampler chain (`sampler_not_compiled` says why) and raises
DoesNotFitError (main exits non-zero) after the report is written. topology='cpu' compiles for
this host's CPU devices (the check of the figures against a real run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath

import sharding
from training import loop, stand_ins, step_cost, tpu_topologies
from training.compile_sampler import sampler_report
from training.compile_text import collectives, format_report
from training.compiled_memory import (
    compile_or_out_of_memory,
    estimate_seconds,
    memory_from_error,
    peak_bytes,
    shard_bytes,
)
from training.experiment import Experiment, build_experiment
from training.run_config import RunConfig
from training.train_state import TrainState


class DoesNotFitError(RuntimeError):
    """The compiled step needs more memory per device than the chip has."""


def abstract_batch(experiment: Experiment, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """A shape-only global batch of what the train step reads for this experiment."""
    data, kind = experiment.data, experiment.step_config.conditioning
    size = data.image_size
    batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, data.channels), jnp.float32)}
    if kind == "class":
        batch["label"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    elif kind == "text" and experiment.caption_bank is not None:
        batch["caption_id"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    elif kind == "text":  # free text: the host sends the encoder's outputs
        example = experiment.text_encoder.encode([""])
        batch["context"] = jax.ShapeDtypeStruct(
            (batch_size, *example.tokens.shape[1:]), jnp.float32
        )
        batch["context_mask"] = jax.ShapeDtypeStruct((batch_size, *example.mask.shape[1:]), bool)
        if experiment.text_encoder.use_pooled:
            pooled = example.pooled.shape[1:]
            batch["pooled"] = jax.ShapeDtypeStruct((batch_size, *pooled), jnp.float32)
    return batch


def abstract_tree(tree, mesh):
    """Concrete host arrays (caption bank, frozen autoencoder) as replicated abstract leaves."""
    replicated = sharding.replicated(mesh)
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated), tree
    )


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    """One train step built for a device list and compiled, with what it was built from;
    `compiled` is None and `error` says why when the compiler refused it for lack of HBM."""

    experiment: Experiment
    state: TrainState
    shardings: TrainState
    batch: dict[str, jax.ShapeDtypeStruct]
    compiled: jax.stages.Compiled | None
    seconds: float
    error: str = ""


def _compile_train_step(run: RunConfig, devices: list) -> CompiledStep:
    """The run's real train step, on abstract state and batch, compiled for `devices`."""
    experiment = build_experiment(run, devices, shape_only_weights=True)
    state, shardings = loop.abstract_state(experiment, run.seed)
    step = loop.make_train_step(experiment, shardings)
    batch = abstract_batch(experiment, run.batch_size)
    frozen = experiment.frozen
    start = time.perf_counter()
    lowered = step.lower(
        state, batch, None if frozen is None else abstract_tree(frozen, experiment.mesh)
    )
    compiled, error = compile_or_out_of_memory(lowered)
    seconds = time.perf_counter() - start
    return CompiledStep(experiment, state, shardings, batch, compiled, seconds, error)


def _target(topology: str, num_slices: int) -> tuple[str, list, tpu_topologies.Chip]:
    """(name, devices, chip) of a TPU topology, or of this host's CPU devices for 'cpu'."""
    if topology.strip().lower() == "cpu":  # the check of the estimate against a real run
        devices = jax.devices("cpu")
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return "cpu", devices, tpu_topologies.Chip("cpu", memory, 0.0)
    name, chip = tpu_topologies.resolve(topology)
    return name, tpu_topologies.topology_devices(name, num_slices), chip


def compile_report(
    config: RunConfig | ml_collections.ConfigDict,
    topology: str,
    num_slices: int = 1,
    *,
    sampler: bool = True,
) -> dict[str, object]:
    """Builds the run for `topology`, compiles its train step (and, when the step fits, its
    sampler chain) there and reports (see module)."""
    name, devices, chip = _target(topology, num_slices)
    hosts = len({device.process_index for device in devices})
    config_dict = config.to_configdict() if isinstance(config, RunConfig) else config
    run = RunConfig.from_configdict(config_dict, len(devices), hosts)
    step = _compile_train_step(run, devices)
    state, batch, mesh = step.state, step.batch, step.experiment.mesh
    chips = num_slices * len({tuple(getattr(device, "coords", (device.id,))) for device in devices})
    devices_per_chip = len(devices) / chips
    hbm = chip.hbm_bytes / devices_per_chip
    peak_flops = chip.peak_bf16_flops / devices_per_chip
    batch_bytes = sum(
        leaf.size // sharding.num_batch_shards(mesh) * jnp.dtype(leaf.dtype).itemsize
        for leaf in batch.values()
    )
    if step.compiled is None:
        state_bytes = sum(shard_bytes(part) for part in (state.params, state.ema_params))
        state_bytes += shard_bytes(state.opt_state)
        memory = memory_from_error(step.error, state_bytes + batch_bytes)
    else:
        memory = peak_bytes(step.compiled)
    fits = memory["peak"] <= hbm
    cost, twin_seconds, repeats = _estimate_cost(step, config_dict, devices, hosts, fits)
    flops = cost.get("flops", 0.0) * repeats
    bandwidth = chip.hbm_bytes_per_second / devices_per_chip
    seconds, source, optimal, roofline = estimate_seconds(cost, peak_flops, bandwidth)
    seconds, optimal, roofline = seconds * repeats, optimal * repeats, roofline * repeats
    model_flops = step_cost.model_flops(config_dict)
    mib = 2**20
    report = {
        "topology": name,
        "num_slices": num_slices,
        "chips": chips,
        "devices": len(devices),
        "hosts": hosts,
        "device_kind": devices[0].device_kind,
        "mesh": dict(mesh.shape),
        "batch_size": run.batch_size,
        "params": int(sum(leaf.size for leaf in jax.tree.leaves(state.params))),
        "per_device_mib": {
            "params": shard_bytes(state.params) / mib,
            "ema_params": shard_bytes(state.ema_params) / mib,
            "optimizer_state": shard_bytes(state.opt_state) / mib,
            "batch": batch_bytes / mib,
            **{part: size / mib for part, size in memory.items()},
            "hbm": hbm / mib,
        },
        "fits": fits,
        "model_flops_per_step": model_flops,
        "model_flops_per_image": model_flops / run.batch_size,
        "flops_per_device": flops,
        "bytes_accessed_per_device": cost.get("bytes accessed", 0.0) * repeats,
        "estimated_from_loop_free_twin": twin_seconds > 0,
        "compiler_error": step.error,
        "compiler_optimal_seconds": optimal,
        "roofline_seconds": roofline,
        "estimate_source": source,
        "estimated_step_seconds": seconds,
        "estimated_images_per_second": run.batch_size / seconds if seconds > 0 else None,
        # Model FLOPs (no remat) over the step time at the chips' peak: MFU as PaLM defines it.
        "estimated_mfu": model_flops / (seconds * peak_flops * len(devices))
        if seconds > 0
        else None,
        "peak_bf16_flops_per_device": peak_flops,
        "collectives": collectives(step.compiled.as_text()) if step.compiled else {},
        "seconds_to_compile": step.seconds + twin_seconds,
        "note": "compiler estimates (XLA's memory analysis and optimal_seconds), not measurements",
    }
    if sampler and step.experiment.step_config.autoencoder is None:
        if report["fits"] and step.compiled:
            report["sampler"] = sampler_report(
                config_dict, step, devices, hosts, hbm, (peak_flops, bandwidth)
            )
        else:  # the step needs its fix first; the chain is compiled with the fixed config
            report["sampler_not_compiled"] = "the train step does not fit"
    return report


def _estimate_cost(
    step: CompiledStep,
    config_dict: ml_collections.ConfigDict,
    devices: list,
    hosts: int,
    fits: bool,
) -> tuple[dict[str, float], float, int]:
    """(XLA's cost analysis, seconds spent compiling a twin, times it repeats per step) of what
    the step time is estimated on: the step itself, or when it has loops its loop-free twin
    (step_cost) at one micro-batch, repeated grad_accumulation_steps times. ({}, 0, 1) when
    nothing compiled, or when the step needs a twin but does not fit (the twin is another
    compile as long as the step's, for the time of a step that cannot run)."""
    if step.compiled is None:
        return {}, 0.0, 1
    twin_config = step_cost.counting_twin(config_dict)
    if not step_cost.has_loops(step.compiled) or twin_config.to_dict() == config_dict.to_dict():
        return step_cost.cost(step.compiled), 0.0, 1
    if not fits:
        return {}, 0.0, 1
    repeats = step.experiment.run.training.grad_accumulation_steps
    twin_config.batch_size = step.experiment.run.batch_size // repeats
    twin = _compile_train_step(RunConfig.from_configdict(twin_config, len(devices), hosts), devices)
    if twin.compiled is None:
        return {}, twin.seconds, 1
    return step_cost.cost(twin.compiled), twin.seconds, repeats


def compile_for_topology(
    config: RunConfig | ml_collections.ConfigDict, workdir: str
) -> dict[str, object]:
    """--mode=compile: reports, writes `<workdir>/compile/<topology>.json`, and when the step
    does not fit tries the memory switches (fsdp over every device, remat, accumulation, bf16)
    one at a time, reports each, then raises DoesNotFitError."""
    config_dict = config.to_configdict() if isinstance(config, RunConfig) else config
    section = config_dict.get("compile", {})
    topology = section.get("topology", tpu_topologies.CompileConfig.topology)
    slices = section.get("num_slices", 1)
    stand_in_dir = str(epath.Path(workdir) / "compile" / "stand_ins")
    config_dict, replaced = stand_ins.substitute(config_dict, stand_in_dir)
    for dotted, missing in replaced.items():
        print(
            f"{dotted}={missing!r} is not here: compiled with the architecture of "
            f"{config_dict[dotted.split('.')[0]][dotted.split('.')[1]]} (config files only)"
        )
    report = compile_report(config_dict, topology, slices)  # checked for the slice's devices
    report["stand_ins"] = replaced
    run = RunConfig.from_configdict(config_dict, report["devices"], report["hosts"])
    print(format_report(report), flush=True)
    if not report["fits"]:
        report["alternatives"] = {}
        for label, change in memory_switches(run).items():
            changed = run.to_configdict()
            for dotted, value in change.items():
                section, field_name = dotted.split(".")
                changed[section][field_name] = value
            try:
                other = compile_report(changed, topology, slices, sampler=False)
            except Exception as error:  # noqa: BLE001 (a switch the config refuses is reported)
                report["alternatives"][label] = {"error": str(error)}
                continue
            report["alternatives"][label] = {
                "peak_mib": other["per_device_mib"]["peak"],
                "fits": other["fits"],
                "estimated_step_seconds": other["estimated_step_seconds"],
            }
            verdict = "fits" if other["fits"] else "does not fit"
            print(f"  with {label}: peak {other['per_device_mib']['peak']:.1f} MiB, {verdict}")
    path = epath.Path(workdir) / "compile" / f"{report['topology'].replace(':', '_')}.json"
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str))
        logging.info("Wrote %s", path)
    if not report["fits"]:
        memory = report["per_device_mib"]
        raise DoesNotFitError(
            f"The train step needs {memory['peak']:.1f} MiB per device on {report['topology']}, "
            f"{memory['peak'] - memory['hbm']:.1f} MiB more than the {memory['hbm']:.0f} MiB of "
            f"HBM; tried: {json.dumps(report['alternatives'])}."
        )
    return report


def memory_switches(run: RunConfig) -> dict[str, dict[str, object]]:
    """The known ways to need less memory per device that this config does not use yet."""
    switches: dict[str, dict[str, object]] = {}
    if run.mesh.fsdp != -1:
        switches["mesh.fsdp=-1 (FSDP over every device)"] = {"mesh.data": 1, "mesh.fsdp": -1}
    if not getattr(run.model, "remat", True):
        switches["model.remat=True"] = {"model.remat": True}
    accumulation = run.training.grad_accumulation_steps
    switches[f"training.grad_accumulation_steps={4 * accumulation}"] = {
        "training.grad_accumulation_steps": 4 * accumulation
    }
    if getattr(run.model, "dtype", "bfloat16") != "bfloat16":
        switches["model.dtype=bfloat16"] = {"model.dtype": "bfloat16"}
    return switches
