"""Fault injection: `python main.py` killed at random moments, restarted, and compared bit for bit.

Every test trains tools/fault_injection.py's tiny digits U-Net (2 CPU devices, dropout, a
warm-up) to step 24 with a checkpoint every 3 steps, in a subprocess, and compares the last
checkpoint (params, EMA, optimizer state, RNG key, step) with one uninterrupted reference run's,
leaf by leaf and byte for byte. Each restart must log a restore of the newest complete checkpoint
on disk, and every step any start logs must show the reference's loss (re-run steps included).

All of it is `slow` (subprocess runs of main.py): one SIGKILL during a save plus one at a step
(3 starts), one SIGTERM (2 starts), and a seeded campaign of 8 SIGKILLs (during saves, at steps,
during start-up) with a SIGTERM among them. Run more with
`python -m tools.fault_injection --kills=N`.
"""

import json
import os

import pytest

from tools import fault_injection as fi

pytestmark = pytest.mark.slow  # every test runs main.py in subprocesses

NUM_STEPS = 24
CHECKPOINT_EVERY = 3
STATE_FIELDS = {"step", "params", "ema_params", "opt_state", "rng"}
# What an Orbax checkpoint is made of: JSON metadata, commit markers, and TensorStore OCDBT files
# (b-tree nodes, data files and manifests start 0x0cdb; zstd-compressed chunks start 28 b5 2f fd).
BINARY_MAGIC = (b"\x0c\xdb", b"\x28\xb5\x2f\xfd")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, which also fills the compilation cache every later start reads."""
    root = tmp_path_factory.mktemp("fault_injection")
    env = fi.child_env(str(root / "compile_cache"))
    workdir = str(root / "reference")
    attempt = fi.run_once(workdir, NUM_STEPS, CHECKPOINT_EVERY, env)
    assert not attempt.problems(NUM_STEPS), open(attempt.log_path).read()[-3000:]
    return {"root": root, "env": env, "workdir": workdir, "attempt": attempt}


def _run_faulted(reference, name: str, faults: list[fi.Fault]) -> tuple[str, list[fi.Attempt]]:
    workdir = str(reference["root"] / name)
    attempts = fi.run_with_faults(workdir, NUM_STEPS, CHECKPOINT_EVERY, faults, reference["env"])
    summary = fi.summarise(attempts)
    print(summary)  # pytest -s: what each start did
    problems = fi.check(workdir, reference["workdir"], attempts, reference["attempt"], NUM_STEPS)
    assert not problems, "\n".join([summary, *problems])
    delivered = [a for a in attempts if a.fault is not None and a.signalled]
    assert len(delivered) == len(faults), summary
    return workdir, attempts


def _restored_is_previous_complete(attempts: list[fi.Attempt], i: int) -> None:
    """Start i was killed mid-save of step N: start i+1 restored an older, complete checkpoint."""
    cut, after = attempts[i].cut_save, attempts[i + 1]
    assert cut is not None, fi.summarise(attempts)
    cut_step = int(cut.removesuffix(fi.TMP_SUFFIX))
    assert after.newest_before is not None and after.newest_before < cut_step
    assert after.restored == after.newest_before  # ...and said which one
    assert f"Restoring checkpoint at step {after.restored}" in open(after.log_path).read()


def test_sigkill_during_a_save_and_at_a_step_resumes_bit_identically(reference):
    faults = [
        # Step 8 comes after the save of step 3 finished (a save waits for the one before), so
        # the save cut here is a later one and checkpoint 3 at least is complete.
        fi.Fault("save", 8, 0.0),
        fi.Fault("step", 8, 0.02),
    ]
    workdir, attempts = _run_faulted(reference, "sigkill", faults)
    _restored_is_previous_complete(attempts, 0)
    assert attempts[2].restored is not None and attempts[2].last_step == NUM_STEPS
    assert set(fi.load_state(workdir, NUM_STEPS)) == STATE_FIELDS


def test_sigterm_saves_exits_zero_and_resumes_bit_identically(reference):
    _, attempts = _run_faulted(reference, "sigterm", [fi.Fault("term", 7, 0.0)])
    preempted, resumed = attempts
    assert preempted.returncode == 0 and preempted.preempted_at >= 7
    assert resumed.restored == preempted.preempted_at == resumed.started_at
    assert (
        f"Preempted: saved checkpoint at step {preempted.preempted_at}"
        in open(preempted.log_path).read()
    )


def test_many_kills_in_one_run_resume_bit_identically(reference):
    faults = fi.plan_faults(8, NUM_STEPS, CHECKPOINT_EVERY, seed=0, kinds=("step", "save", "start"))
    faults.insert(1, fi.Fault("term", 4, 0.01))  # early: see docs/reliability.md on the end
    _, attempts = _run_faulted(reference, "campaign", faults)
    cut = [i for i, a in enumerate(attempts) if a.cut_save is not None]
    assert len(cut) >= 2, fi.summarise(attempts)  # seed 0 plans 4 cut saves
    for i in cut:
        if attempts[i + 1].newest_before is not None:
            _restored_is_previous_complete(attempts, i)
    assert os.path.exists(attempts[-1].log_path)


def test_checkpoints_hold_json_and_tensorstore_files_never_a_pickle(reference):
    checkpoints = fi.checkpoint_dir(reference["workdir"])
    files = [os.path.join(d, f) for d, _, names in os.walk(checkpoints) for f in names]
    assert len(files) > 10
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        if os.path.basename(path) == "commit_success.txt":
            assert data.startswith(b"Checkpoint commit was successful"), path
        elif not data.startswith(BINARY_MAGIC):
            json.loads(data)  # raises on anything else, a pickle (b"\x80\x04...") included
