"""Real multi-process runs: `python main.py --multihost` as 2 processes x 2 CPU devices.

The slow tests train the tiny digits U-Net of tests/training/conftest.py as 2 processes x 2
devices (gloo collectives, a local coordinator) and as 1 process x 4 devices on the same global
batch and seed, compare what they checkpoint, and continue each run's checkpoint in the other
layout. The 2-process runs split the parameters over both processes (mesh.fsdp=4), so their
checkpoints hold shards written by each process; the 1-process runs replicate them (mesh.data=4).
"""

import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from input_pipeline import digits
from tests.training.test_loop import _scalars
from tests.xla_flags import cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 4  # global devices of every run: 1 process x 4 or 2 processes x 2
TIMEOUT_S = 300  # per run, all its processes together
TINY = ("--config=configs/digits_tiny.py", "--config.sample_every_steps=0")
LAYOUT = {1: ("--config.mesh.data=4",), 2: ("--config.mesh.data=1", "--config.mesh.fsdp=4")}
# fp32 agreement of two runs whose all-reduces add in different orders. Adam divides by
# sqrt(v): on near-zero gradients (zero-initialised convolutions) it turns their rounding into
# parameter differences of up to ~1e-6 after 4-6 steps of lr 1e-3 (measured: 9.2e-7).
TOLERANCE = {"rtol": 1e-5, "atol": 2e-6}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _main_args(workdir: str, num_processes: int, process_id: int, port: int) -> list[str]:
    args = [sys.executable, "main.py", f"--workdir={workdir}"]
    if num_processes > 1:
        args += [
            "--multihost",
            f"--coordinator_address=127.0.0.1:{port}",
            f"--num_processes={num_processes}",
            f"--process_id={process_id}",
        ]
    return args


def _train(workdir: str, num_processes: int, steps: int, cache_dir: str, *extra: str) -> list:
    """Runs main.py as `num_processes` processes to `steps`; returns their pids (process order).

    Kills every process when one fails or the time runs out, and fails with their log tails.
    """
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": cpu_devices(DEVICES // num_processes),
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",  # compile faster; every run uses the same setting
        "JAX_COMPILATION_CACHE_DIR": cache_dir,  # a resumed run reuses the first run's compile
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    port = _free_port()
    flags_ = [*TINY, *LAYOUT[num_processes], f"--config.num_train_steps={steps}", *extra]
    log_paths = [f"{workdir}.{steps}.process{i}.log" for i in range(num_processes)]
    procs = []
    try:
        for i, log_path in enumerate(log_paths):
            with open(log_path, "w") as log:
                procs.append(
                    subprocess.Popen(
                        [*_main_args(workdir, num_processes, i, port), *flags_],
                        cwd=REPO,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:  # a failed process leaves its peers waiting: stop
            codes = [p.poll() for p in procs]
            if None not in codes or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    codes = [p.returncode for p in procs]
    if codes != [0] * num_processes:
        tails = "".join(
            f"\n--- {path} (exit {code}) ---\n{open(path).read()[-3000:]}"
            for path, code in zip(log_paths, codes, strict=True)
        )
        pytest.fail(f"{num_processes}-process run to step {steps} failed:{tails}")
    return [p.pid for p in procs]


def _restore_numpy(workdir: str, step: int) -> dict:
    """The checkpointed train state at `step` as numpy arrays, whatever layout wrote it."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, restore_args=as_numpy)


def _assert_same_state(a: dict, b: dict) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **TOLERANCE, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Step 4 of the same run trained as 2 processes x 2 devices and as 1 process x 4."""
    root = tmp_path_factory.mktemp("multihost")
    cache = str(root / "compile_cache")
    two, one = str(root / "two_processes"), str(root / "one_process")
    pids = _train(two, 2, 4, cache, "--config.sample_every_steps=4")
    _train(one, 1, 4, cache)
    return {"root": root, "cache": cache, "two": two, "one": one, "two_pids": pids}


@pytest.mark.parametrize(
    ("flags_", "message"),
    [
        (["--num_processes=2"], "--num_processes need --multihost"),
        (["--multihost", "--coordinator_address=127.0.0.1:1234"], "missing --num_processes"),
        (
            ["--multihost", "--coordinator_address=h:1", "--num_processes=2", "--process_id=2"],
            "--process_id=2 must be in [0, --num_processes=2)",
        ),
        (
            ["--multihost", "--coordinator_address=h", "--num_processes=2", "--process_id=0"],
            "--coordinator_address='h' must be host:port",
        ),
    ],
)
def test_bad_distributed_flags_stop_before_anything_starts(flags_, message, tmp_path):
    workdir = str(tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "main.py", "--config=configs/digits_ddpm.py", f"--workdir={workdir}"]
        + flags_,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(workdir)


@pytest.mark.parametrize("flip", [False, True])
def test_process_slices_concatenate_to_the_one_process_batch(flip):
    images, labels = digits.load_digits_images()

    def batch(process_index: int, process_count: int) -> dict:
        return digits.make_batch(
            images,
            labels,
            step=3,
            seed=0,
            per_process_batch_size=16 // process_count,
            process_index=process_index,
            process_count=process_count,
            random_flip=flip,
        )

    whole = batch(0, 1)
    parts = [batch(i, 4) for i in range(4)]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


@pytest.mark.slow
def test_two_processes_match_one_and_only_process_zero_writes_files(runs):
    _assert_same_state(_restore_numpy(runs["two"], 4), _restore_numpy(runs["one"], 4))
    two, one = _scalars(runs["two"]), _scalars(runs["one"])
    assert [s for s, _ in two["loss"]] == [2, 4]
    np.testing.assert_allclose([v for _, v in two["loss"]], [v for _, v in one["loss"]], rtol=1e-5)

    # Process 0 alone writes summaries and sample grids; every process writes checkpoint shards.
    events = [f for f in os.listdir(runs["two"]) if f.startswith("events.out.tfevents")]
    assert len(events) == 1 and f".{runs['two_pids'][0]}." in events[0], events
    assert os.listdir(os.path.join(runs["two"], "samples")) == ["step_00000004.png"]
    state_dir = os.path.join(runs["two"], "checkpoints", "4", "state")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state_dir))


@pytest.mark.slow
def test_checkpoints_continue_across_process_counts(runs):
    # Copies, so the step-4 runs stay as the other test expects them.
    two_then_one = str(runs["root"] / "two_then_one")
    one_then_two = str(runs["root"] / "one_then_two")
    shutil.copytree(runs["two"], two_then_one)
    shutil.copytree(runs["one"], one_then_two)
    _train(two_then_one, 1, 6, runs["cache"])
    _train(one_then_two, 2, 6, runs["cache"])
    for workdir in (two_then_one, one_then_two):
        assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6"]
        assert [s for s, _ in _scalars(workdir)["loss"]] == [2, 4, 6]  # resumed, not restarted
    _assert_same_state(_restore_numpy(two_then_one, 6), _restore_numpy(one_then_two, 6))
    np.testing.assert_allclose(
        [v for _, v in _scalars(two_then_one)["loss"]],
        [v for _, v in _scalars(one_then_two)["loss"]],
        rtol=1e-5,
    )
