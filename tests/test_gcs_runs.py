"""main.py on a gs:// workdir against a Cloud Storage server on localhost (tests/gcs_server.py).

Subprocesses with every layer pointed at the server: a tiny digits run reading its images from
the bucket (data.name='folder') and keeping checkpoints, events and sample grids there is
SIGKILLed once a checkpoint is committed, resumed from the bucket, and must end bit-identical to
an uninterrupted local run on the same images; then --mode=sample and --mode=eval read it (the
reference statistics written into the bucket by eval_stats in this process).
"""

import io
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests import gcs_server
from tests.gcs_server import BUCKET, object_names
from tools import fault_injection as fi
from tools.fault_log import STEP_LINE, Attempt, load_state, parse_log, state_differences
from training import eval_run

pytestmark = pytest.mark.slow  # main.py in subprocesses

NUM_STEPS, CHECKPOINT_EVERY = 8, 2
NUM_IMAGES = 64  # digits written as 8x8 grey PNGs: the runs' data.name='folder'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """(server URL, the bucket): a fresh server, this process's environment pointed at it."""
    with gcs_server.serve(tmp_path_factory.mktemp("gcs_server") / "server.log") as served:
        yield served


def _flags(workdir: str, data_dir: str, *extra: str) -> list[str]:
    tiny = [f for f in fi.TINY_FLAGS if not f.startswith("--config.sample_every_steps")]
    return [
        f"--workdir={workdir}",
        *tiny,
        f"--config.num_train_steps={NUM_STEPS}",
        f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}",
        f"--config.sample_every_steps={NUM_STEPS}",  # one grid, at the end
        "--config.data.name=folder",
        f"--config.data.data_dir={data_dir}",
        *extra,
    ]


def _main(args: list[str], env: dict[str, str], log_path, kill_when=None) -> Attempt:
    """Runs main.py to its end (or SIGKILLs it once `kill_when(log text)` is true); what it did."""
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "main.py", *args], cwd=REPO, env=env, stdout=log, stderr=log
        )
    attempt = Attempt(None, str(log_path), None)
    try:
        while proc.poll() is None and time.monotonic() - start < 300:
            time.sleep(0.1)
            if kill_when is not None and kill_when(_text(log_path)):
                proc.kill()
                attempt.signalled = True
        assert proc.poll() is not None, f"{log_path}: no exit after 300 s"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    attempt.returncode, attempt.wall_s = proc.returncode, time.monotonic() - start
    parse_log(_text(log_path), attempt)
    print(f"{os.path.basename(log_path)}: exit {proc.returncode}, {attempt.wall_s:.1f} s")
    return attempt


def _text(path) -> str:
    with open(path) as file:
        return file.read()


def _committed(bucket, prefix: str) -> list[int]:
    """Steps whose Orbax checkpoint is complete in the bucket (commit_success.txt written)."""
    pattern = re.compile(re.escape(prefix) + r"/checkpoints/(\d+)/commit_success\.txt")
    return sorted(
        int(m.group(1)) for n in object_names(bucket, prefix) if (m := pattern.fullmatch(n))
    )


@pytest.fixture(scope="module")
def runs(gcs, tmp_path_factory):
    """The uninterrupted local run and the gs:// run (killed once, resumed), on the same images."""
    url, bucket = gcs
    root = tmp_path_factory.mktemp("gcs_runs")
    gcs_server.upload_and_write(
        gcs_server.digit_pngs(NUM_IMAGES), bucket, "digits", root / "digits"
    )
    env = {**fi.child_env(str(root / "compile_cache")), **gcs_server.emulator_env(url)}
    reference = _main(_flags(str(root / "reference"), str(root / "digits")), env, root / "ref.log")
    assert reference.returncode == 0, _text(reference.log_path)[-3000:]

    def past_a_committed_checkpoint(log_text: str) -> bool:
        steps, committed = STEP_LINE.findall(log_text), _committed(bucket, "run")
        return bool(steps and committed) and int(steps[-1][0]) > committed[-1]

    gs_flags = _flags(f"gs://{BUCKET}/run", f"gs://{BUCKET}/digits")
    killed = _main(gs_flags, env, root / "killed.log", kill_when=past_a_committed_checkpoint)
    assert killed.signalled and killed.last_step < NUM_STEPS, _text(killed.log_path)[-3000:]
    resumed = _main(gs_flags, env, root / "resumed.log")
    assert resumed.returncode == 0, _text(resumed.log_path)[-3000:]
    return {"root": root, "env": env, "reference": reference, "killed": killed, "resumed": resumed}


def test_a_sigkilled_gs_run_resumes_from_the_bucket_bit_identically(gcs, runs):
    _, bucket = gcs
    reference, resumed = runs["reference"], runs["resumed"]
    assert resumed.restored is not None and resumed.restored > 0
    log = _text(resumed.log_path)
    assert f"Resumed gs://{BUCKET}/run at step {resumed.restored}" in log
    assert f"Starting at step {resumed.restored} of {NUM_STEPS}" in log
    assert resumed.last_step == NUM_STEPS
    for step, loss in resumed.losses.items():  # re-run steps included
        assert loss == reference.losses[step], step
    copy = runs["root"] / "downloaded"
    for name in object_names(bucket, f"run/checkpoints/{NUM_STEPS}/"):
        target = copy / "checkpoints" / name.removeprefix("run/checkpoints/")
        target.parent.mkdir(parents=True, exist_ok=True)
        bucket.blob(name).download_to_filename(str(target))
    local_state = load_state(str(runs["root"] / "reference"), NUM_STEPS)
    assert state_differences(load_state(str(copy), NUM_STEPS), local_state) == []


def test_the_gs_run_keeps_checkpoints_events_and_samples_in_the_bucket(gcs, runs):
    _, bucket = gcs
    names = object_names(bucket, "run/")
    assert _committed(bucket, "run")[-2:] == [NUM_STEPS - CHECKPOINT_EVERY, NUM_STEPS]
    assert f"run/samples/step_{NUM_STEPS:08d}.png" in names
    assert [n for n in names if n.startswith("run/events.out.tfevents")]  # the resumed start's
    assert not [n for n in names if ".write_probe_" in n]
    grid = Image.open(
        io.BytesIO(bucket.blob(f"run/samples/step_{NUM_STEPS:08d}.png").download_as_bytes())
    )
    assert np.asarray(grid).std() > 0


def test_sample_and_eval_read_the_run_and_statistics_from_the_bucket(gcs, runs, tiny_config):
    _, bucket = gcs
    workdir, env, root = f"gs://{BUCKET}/run", runs["env"], runs["root"]
    stats_dir = f"gs://{BUCKET}/stats"
    tiny_config.eval.stats_dir = stats_dir
    reference = eval_run.eval_stats(tiny_config)  # --mode=eval_stats, here: one subprocess less
    assert reference.path.startswith(f"{stats_dir}/digits_train_8px_digits-")
    common = ["--config=configs/digits_tiny.py", f"--workdir={workdir}"]
    common += [f"--config.eval.stats_dir={stats_dir}", "--config.eval.num_samples=64"]
    common += ["--config.eval.batch_size=64"]
    for mode in ("sample", "eval"):
        attempt = _main([*common, f"--mode={mode}"], env, root / f"{mode}.log")
        assert attempt.returncode == 0, _text(attempt.log_path)[-3000:]
    names = object_names(bucket, "run/")
    stem = f"run/samples/ddim_5steps_step{NUM_STEPS:08d}"
    assert {f"{stem}.png", f"{stem}.npz"} <= set(names)
    samples = np.load(io.BytesIO(bucket.blob(f"{stem}.npz").download_as_bytes()))["samples"]
    assert samples.shape == (16, 8, 8, 1) and np.all(np.abs(samples) <= 1)
    record = json.loads(bucket.blob(f"run/eval/{NUM_STEPS}_ddim_5.json").download_as_bytes())
    assert record["reference"] == reference.path and record["num_samples"] == 64
    assert np.isfinite(record["metrics"]["fid"]) and f"run/eval/{NUM_STEPS}_table.md" in names
