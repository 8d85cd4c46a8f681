"""--mode=compile: the run's real train step compiled for a TPU slice it does not have.

    python main.py --mode=compile --config=configs/cifar_ddpm.py --workdir=runs/plan \\
        --config.compile.topology=v5e-64

The experiment is built exactly as a training run builds it (config.mesh over the slice's
devices, the same logical rules, shardings, dtype, remat and accumulation) on abstract inputs, and
XLA's TPU compiler (libtpu, no TPU attached) compiles the step. Reported per device: the train
state's bytes by part, XLA's argument / temporary / output bytes and the peak they add up to
against the chip's HBM; the compiler's FLOPs, bytes accessed and `optimal_seconds` (its own
estimate of the step time: a compiler estimate, not a measurement), and from them images/s and
MFU against the chip's peak bf16 FLOP/s; the collectives in the compiled step. Written to
`<workdir>/compile/<topology>.json`. A step that does not fit raises DoesNotFitError (main exits
non-zero) after the report is written.
"""

from __future__ import annotations

import collections
import json
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

import sharding
from training import loop, tpu_topologies
from training.experiment import Experiment, build_experiment
from training.run_config import RunConfig

# XLA's collective ops as they appear in compiled HLO text ("-start" for the async forms).
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_HLO_OP = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(",
    re.MULTILINE,
)
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")


class DoesNotFitError(RuntimeError):
    """The compiled step needs more memory per device than the chip has."""


def shard_bytes(tree) -> int:
    """Bytes one device holds of an abstract tree whose leaves carry NamedShardings."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


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


def _abstract(tree, mesh):
    """Concrete host arrays (caption bank, frozen autoencoder) as replicated abstract leaves."""
    replicated = sharding.replicated(mesh)
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=replicated), tree
    )


def collectives(hlo_text: str) -> dict[str, dict[str, float]]:
    """{op: {"count", "bytes"}} of the collectives in compiled HLO (bytes of their results)."""
    found: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for shape_text, op in _HLO_OP.findall(hlo_text):
        size = 0
        for dtype, dims in _ARRAY.findall(shape_text):
            if dtype == "token":
                continue
            count = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            size += count * _itemsize(dtype)
        found[op]["count"] += 1
        found[op]["bytes"] += size
    return dict(found)


def _itemsize(hlo_dtype: str) -> int:
    bits = re.search(r"(\d+)$", hlo_dtype)
    if hlo_dtype == "pred":
        return 1
    return max(1, int(bits.group(1)) // 8) if bits else 4


def compile_report(
    config: RunConfig | ml_collections.ConfigDict, topology: str, num_slices: int = 1
) -> dict[str, object]:
    """Builds the run for `topology`, compiles its train step there and reports (see module)."""
    name, chip = tpu_topologies.resolve(topology)
    devices = tpu_topologies.topology_devices(name, num_slices)
    hosts = len({device.process_index for device in devices})
    config_dict = config.to_configdict() if isinstance(config, RunConfig) else config
    run = RunConfig.from_configdict(config_dict, len(devices), hosts)
    experiment = build_experiment(run, devices)
    mesh = experiment.mesh
    state, shardings = loop.abstract_state(experiment, run.seed)
    step = loop.make_train_step(experiment, shardings)
    batch = abstract_batch(experiment, run.batch_size)
    frozen = experiment.frozen
    start = time.perf_counter()
    compiled = step.lower(state, batch, None if frozen is None else _abstract(frozen, mesh))
    compiled = compiled.compile()
    seconds_to_compile = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    chips = len({tuple(device.coords) for device in devices}) * num_slices
    devices_per_chip = len(devices) / chips
    hbm = chip.hbm_bytes / devices_per_chip
    peak_flops = chip.peak_bf16_flops / devices_per_chip
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
        + memory.generated_code_size_in_bytes
    )
    flops = float(cost.get("flops", 0.0))
    optimal = float(cost.get("optimal_seconds", 0.0))
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
            "batch": sum(
                leaf.size // sharding.num_batch_shards(mesh) * jnp.dtype(leaf.dtype).itemsize
                for leaf in batch.values()
            )
            / mib,
            "arguments": memory.argument_size_in_bytes / mib,
            "temporaries": memory.temp_size_in_bytes / mib,
            "outputs_not_aliased": (memory.output_size_in_bytes - memory.alias_size_in_bytes) / mib,
            "generated_code": memory.generated_code_size_in_bytes / mib,
            "peak": peak / mib,
            "hbm": hbm / mib,
        },
        "fits": peak <= hbm,
        "flops_per_device": flops,
        "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0)),
        "compiler_optimal_seconds": optimal,
        "estimated_step_seconds": optimal,
        "estimated_images_per_second": run.batch_size / optimal if optimal else None,
        "estimated_mfu": flops / (optimal * peak_flops) if optimal else None,
        "peak_bf16_flops_per_device": peak_flops,
        "collectives": collectives(compiled.as_text()),
        "seconds_to_compile": seconds_to_compile,
        "note": "compiler estimates (XLA's memory analysis and optimal_seconds), not measurements",
    }
    return report


def format_report(report: dict[str, object]) -> str:
    """The report as a few readable lines."""
    memory = report["per_device_mib"]
    lines = [
        f"{report['topology']} x{report['num_slices']}: {report['chips']} chips, "
        f"{report['devices']} devices ({report['device_kind']}), {report['hosts']} hosts, "
        f"mesh {report['mesh']}, batch {report['batch_size']}, "
        f"{report['params'] / 1e6:.1f}M params",
        f"per device: params {memory['params']:.1f} + EMA {memory['ema_params']:.1f} + optimizer "
        f"{memory['optimizer_state']:.1f} + batch {memory['batch']:.1f} MiB; XLA: arguments "
        f"{memory['arguments']:.1f}, temporaries {memory['temporaries']:.1f}, outputs "
        f"{memory['outputs_not_aliased']:.1f}, code {memory['generated_code']:.1f} -> peak "
        f"{memory['peak']:.1f} of {memory['hbm']:.0f} MiB HBM: "
        + ("fits" if report["fits"] else "DOES NOT FIT"),
    ]
    if report["compiler_optimal_seconds"]:
        lines.append(
            f"compiler estimate: {report['flops_per_device'] / 1e9:.2f} GFLOP and "
            f"{report['bytes_accessed_per_device'] / 2**30:.2f} GiB accessed per device, step "
            f"{report['estimated_step_seconds'] * 1e3:.2f} ms -> "
            f"{report['estimated_images_per_second']:.0f} images/s, MFU "
            f"{100 * report['estimated_mfu']:.1f}% (estimates, not measurements)"
        )
    ops = ", ".join(
        f"{op} x{found['count']} ({found['bytes'] / 2**20:.1f} MiB)"
        for op, found in report["collectives"].items()
    )
    lines.append(f"collectives: {ops or 'none'}")
    return "\n".join(lines)


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
    report = compile_report(config_dict, topology, slices)  # checked for the slice's devices
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
                other = compile_report(changed, topology, slices)
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
