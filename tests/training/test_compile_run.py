import dataclasses
import json

import jax
import pytest

from training import compile_run, compile_text, compiled_memory, tpu_topologies

HLO = """
  %all-reduce.1 = (f32[16]{0:T(128)S(1)}, /*index=1*/f32[3,3,1,16]{3,2,1,0:T(1,128)}) \
all-reduce(f32[16] %a, f32[3,3,1,16] %b), channel_id=1
  ROOT %ag = bf16[8,128]{1,0} all-gather-start(bf16[2,128]{1,0} %p), dimensions={0}
  %ag.done = bf16[8,128]{1,0} all-gather-done(%ag)
  %sum = f32[4]{0} add(f32[4] %a, f32[4] %b)
"""


def test_collectives_are_counted_with_their_result_bytes():
    found = compile_text.collectives(HLO)
    assert found == {
        "all-reduce": {"count": 1, "bytes": (16 + 3 * 3 * 16) * 4},
        "all-gather": {"count": 1, "bytes": 8 * 128 * 2},  # the -done half is not counted again
    }


def _has_libtpu() -> bool:
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec("libtpu") is not None


needs_libtpu = pytest.mark.skipif(
    not _has_libtpu(), reason="libtpu (requirements-tpu.txt) is not installed"
)


def _abstract_params(config):
    from training.experiment import build_experiment  # noqa: PLC0415

    return build_experiment(config, jax.devices()[:4]).model.abstract_params


def _tiled(shape) -> int:
    """Elements of a leaf padded to TPU tiles: the last dim to 128, the one before it to 8."""
    up = lambda n, m: -(-n // m) * m  # noqa: E731
    if len(shape) == 0:
        return 1
    if len(shape) == 1:
        return up(shape[0], 128)
    rest = 1
    for n in shape[:-2]:
        rest *= n
    return rest * up(shape[-2], 8) * up(shape[-1], 128)


@pytest.mark.slow
@needs_libtpu
def test_tiny_config_on_v5e_2x2_matches_the_hand_count_and_fsdp_quarters_params(tiny_config):
    tiny_config.compile.topology = "v5e:2x2"
    tiny_config.mesh.data = 4
    replicated = compile_run.compile_report(tiny_config, "v5e:2x2")
    chain = replicated["sampler"]  # the sampler chain, compiled for the same slice
    assert chain["network_evaluations"] == tiny_config.sampler.num_steps and chain["fits"]
    assert chain["estimated_chain_seconds"] == pytest.approx(
        chain["network_evaluations"] * chain["estimated_seconds_per_evaluation"]
    )
    assert chain["estimated_seconds_per_evaluation"] > 0
    assert replicated["devices"] == 4 and replicated["fits"]
    params = replicated["params"]
    memory = replicated["per_device_mib"]
    # Adam: params + EMA + two moments, all float32 and replicated; batch 16 x 8x8x1 float32 / 4.
    # TPU layouts tile the last two dimensions (8 x 128 lanes), so 16-channel leaves are padded:
    # XLA's bytes lie between the plain count and the count with every leaf fully tiled.
    shapes = [leaf.shape for leaf in jax.tree.leaves(_abstract_params(tiny_config))]
    plain = (4 * params * 4 + 16 * 64 * 4 / 4) / 2**20
    tiled = (4 * sum(_tiled(shape) for shape in shapes) * 4 + 16 * 128 * 4) / 2**20
    assert plain <= memory["arguments"] <= tiled
    assert memory["params"] == pytest.approx(params * 4 / 2**20, rel=1e-6)
    assert replicated["compiler_optimal_seconds"] > 0 and replicated["flops_per_device"] > 0
    assert replicated["estimate_source"] == "optimal_seconds"
    # MFU counts the model FLOPs of the step (no remat), not the compiler's
    seconds, devices = replicated["estimated_step_seconds"], replicated["devices"]
    peak = replicated["peak_bf16_flops_per_device"] * devices
    assert replicated["estimated_mfu"] == pytest.approx(
        replicated["model_flops_per_step"] / (seconds * peak)
    )
    assert "all-reduce" in replicated["collectives"]  # data parallel: gradients are summed

    tiny_config.mesh.data, tiny_config.mesh.fsdp = 1, 4
    split = compile_run.compile_report(tiny_config, "v5e:2x2", sampler=False)
    ratio = split["per_device_mib"]["params"] / memory["params"]
    assert 0.25 <= ratio < 0.3  # a quarter, less the few small leaves too short to split
    assert "all-gather" in split["collectives"] or "all-reduce" in split["collectives"]


@pytest.mark.slow
@needs_libtpu
def test_a_step_that_cannot_fit_says_by_how_much_and_what_was_tried(
    smallest_config, tmp_path, monkeypatch, capsys
):
    # A chip of 1 MiB, which the step of a one-level 8-channel U-Net cannot fit (fast to compile).
    # (A config too big for a real 16 GiB chip takes the TPU compiler over 15 minutes on 2 cores.)
    small = dataclasses.replace(tpu_topologies.CHIPS["v5e"], hbm_bytes=2**20)
    monkeypatch.setitem(tpu_topologies.CHIPS, "v5e", small)
    smallest_config.compile.topology = "v5e:2x2"
    smallest_config.mesh.data, smallest_config.mesh.fsdp = 1, -1
    smallest_config.model.remat, smallest_config.model.dtype = True, "bfloat16"
    with pytest.raises(compile_run.DoesNotFitError, match=r"MiB more than the 1 MiB of HBM"):
        compile_run.compile_for_topology(smallest_config, str(tmp_path))
    report = json.loads((tmp_path / "compile" / "v5e_2x2.json").read_text())
    assert report["fits"] is False
    assert report["per_device_mib"]["peak"] > report["per_device_mib"]["hbm"] == 1
    # the sampler chain waits for a step that fits (it would be compiled with the fixed config)
    assert "sampler" not in report
    assert report["sampler_not_compiled"] == "the train step does not fit"
    assert "sampler chain not compiled: the train step does not fit" in capsys.readouterr().out
    # the one switch this config does not use yet was tried, compiled and reported
    assert list(report["alternatives"]) == ["training.grad_accumulation_steps=4"]
    tried = report["alternatives"]["training.grad_accumulation_steps=4"]
    assert tried["fits"] is False and tried["peak_mib"] > 1
    # not timed: a step with a loop (accumulation) is timed on its loop-free twin, another
    # compile, only when it fits
    assert tried["estimated_step_seconds"] == 0


def test_main_exits_non_zero_when_the_step_does_not_fit(monkeypatch, tmp_path):
    import main  # noqa: PLC0415

    def refuse(config, workdir):
        raise compile_run.DoesNotFitError("needs 9 MiB, 1 MiB more than the 8 MiB of HBM")

    monkeypatch.setattr(compile_run, "compile_for_topology", refuse)
    from absl import flags  # noqa: PLC0415

    flags.FLAGS(
        ["main.py", "--config=configs/digits_tiny.py", f"--workdir={tmp_path}", "--mode=compile"]
    )
    try:
        with pytest.raises(SystemExit) as exited:
            main.main(["main.py"])
        assert exited.value.code == 2
    finally:
        flags.FLAGS.unparse_flags()


def test_cpu_figures_match_a_real_cpu_run_of_the_same_config(tiny_config, fast_compiles):
    """--mode=compile on the CPU backend (8 devices, shape-only everything) against the real
    run: the state a real step holds on device 0 and its compiled step's memory analysis."""
    import numpy as np  # noqa: PLC0415

    import sharding  # noqa: PLC0415
    from training import loop  # noqa: PLC0415
    from training.experiment import build_experiment  # noqa: PLC0415
    from training.run_config import RunConfig  # noqa: PLC0415

    tiny_config.mesh.data, tiny_config.mesh.fsdp = 2, 4  # parameters split four ways
    report = compile_run.compile_report(tiny_config, "cpu", sampler=False)
    assert report["devices"] == 8 and report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}

    run = RunConfig.from_configdict(tiny_config)
    experiment = build_experiment(run)
    state, shardings = loop.create_state(experiment, run.seed)
    step = loop.make_train_step(experiment, shardings)
    host = {"image": np.zeros((run.batch_size, 8, 8, 1), np.float32)}
    host["label"] = np.zeros((run.batch_size,), np.int32)
    batch_sharding = sharding.batch_sharding(experiment.mesh)
    batch = sharding.put_host_tree(host, {name: batch_sharding for name in host})
    compiled = step.lower(state, batch, None).compile()
    state, _ = step(state, batch, None)  # the real step runs
    device = jax.devices()[0]

    def on_device(tree) -> float:
        shards = [s for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards]
        return sum(s.data.nbytes for s in shards if s.device == device) / 2**20

    memory = report["per_device_mib"]
    assert memory["params"] == pytest.approx(on_device(state.params), rel=1e-9)
    assert memory["ema_params"] == pytest.approx(on_device(state.ema_params), rel=1e-9)
    assert memory["optimizer_state"] == pytest.approx(on_device(state.opt_state), rel=1e-9)
    real = compiled.memory_analysis()
    # The stated tolerance: 2% on the compiled figures (the same program, built from shapes).
    assert memory["arguments"] == pytest.approx(real.argument_size_in_bytes / 2**20, rel=0.02)
    assert memory["temporaries"] == pytest.approx(real.temp_size_in_bytes / 2**20, rel=0.02)
    assert report["model_flops_per_step"] > 0 and report["compiler_optimal_seconds"] == 0


@pytest.mark.slow
@needs_libtpu
def test_a_scanned_dit_is_estimated_on_its_loop_free_twin():
    # XLA counts a scanned block once and libtpu gives a loop no optimal_seconds: the estimate
    # comes from the same step with its blocks unrolled.
    from configs import digits_dit  # noqa: PLC0415

    config = digits_dit.get_config()
    config.mesh.data = 4
    assert config.model.use_scan
    report = compile_run.compile_report(config, "v5e:2x2", sampler=False)
    assert report["estimated_from_loop_free_twin"] and report["estimated_step_seconds"] > 0
    # the compiler's count (per device, x4) covers all 6 blocks, not one: about the model FLOPs
    assert 0.9 <= 4 * report["flops_per_device"] / report["model_flops_per_step"] < 1.5


def test_a_step_libtpu_refuses_for_hbm_is_reported_from_its_message():
    # The message libtpu 0.0.42.1 gave for DiT-XL/2 at 32 images per v5e chip.
    message = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (40.11G) exceeds available HBM (15.75G)."
    )
    memory = compiled_memory.memory_from_error(message, arguments=3 * 2**30)
    assert memory["temporaries"] == int(40.11 * 2**30)
    assert memory["peak"] == memory["temporaries"] + 3 * 2**30
