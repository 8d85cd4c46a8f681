"""Fault injection: kill a `main.py` training run at random moments, restart it, compare the end.

    python -m tools.fault_injection --kills=8
    python -m tools.fault_injection --kills=20 --steps=60 --seed=3 --sigterm --keep=/tmp/fi

Trains the tiny digits U-Net once without interruption (the reference), then trains it again in
a second workdir while delivering `--kills` faults, each followed by a restart, until a start runs
to the end. The faults, drawn from a seeded RNG:

- "step":  SIGKILL a few milliseconds after the run logs a randomly chosen step;
- "save":  SIGKILL while an Orbax checkpoint save is in flight (its `*.orbax-checkpoint-tmp`
           directory exists); the tmp directory left behind shows the save really was cut;
- "start": SIGKILL at a random moment of start-up (imports, restore, compile), before a step;
- "term":  SIGTERM at a random step (with --sigterm): the run must save, log
           `Preempted: saved checkpoint at step N` and exit 0.

Every start must log `Restoring checkpoint at step N` for the newest complete checkpoint on disk
(none on the first), and every step it logs must show the reference's loss; the last checkpoint
must equal the reference's leaf for leaf, bit for bit (params, EMA, optimizer state, RNG, step).
Exit status 0 when all of that holds. tests/test_fault_injection.py drives the same functions.
What a start logged and left on disk is read back by tools/fault_log.py.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tools.fault_log import (
    STARTING,
    STEP_LINE,
    TMP_SUFFIX,
    Attempt,
    Fault,
    checkpoint_dir,
    complete_steps,
    load_state,
    parse_log,
    saves_in_flight,
    state_differences,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLL_S = 0.005
# The tests' tiny config, logging every step so the driver can see where the run is; its
# dropout and a warm-up make the per-step RNG and the step count matter.
TINY_FLAGS = (
    "--config=configs/digits_tiny.py",
    "--config.log_every_steps=1",
    "--config.sample_every_steps=0",
    "--config.max_checkpoints_to_keep=2",
    "--config.optimizer.warmup_steps=10",
)


def child_env(cache_dir: str, devices: int = 2) -> dict[str, str]:
    """The environment of every start: CPU, `devices` devices, a shared compilation cache."""
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",  # compile faster; every start uses the same setting
        "JAX_COMPILATION_CACHE_DIR": cache_dir,  # written by the reference run, read by restarts
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


def plan_faults(
    num_faults: int, num_steps: int, checkpoint_every: int, seed: int, kinds=("step", "save")
) -> list[Fault]:
    """`num_faults` faults drawn from `kinds` with a seeded RNG. `after_step` counts from the step
    a start resumes at (capped at the run's last step but one), so every start has steps to lose
    and most have saved a checkpoint or two before the fault."""
    rng = random.Random(seed)
    faults = []
    for _ in range(num_faults):
        kind = rng.choice(kinds)
        if kind == "start":
            faults.append(Fault(kind, 0, rng.uniform(1.0, 15.0)))  # or at the first step
        else:
            offset = rng.randint(checkpoint_every, 4 * checkpoint_every)
            faults.append(Fault(kind, offset, rng.uniform(0.0, 0.05)))
    return faults


def run_once(
    workdir: str,
    num_steps: int,
    checkpoint_every: int,
    env: dict[str, str],
    fault: Fault | None = None,
    log_path: str | None = None,
    timeout_s: float = 300.0,
) -> Attempt:
    """Starts main.py once on `workdir`, delivers `fault` (if any), waits for the process to end."""
    log_path = log_path or f"{workdir}.log"
    newest = complete_steps(workdir)
    attempt = Attempt(fault, log_path, newest[-1] if newest else None)
    begin, begin_wall = time.monotonic(), time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "main.py", f"--workdir={workdir}", *TINY_FLAGS]
            + [f"--config.num_train_steps={num_steps}"]
            + [f"--config.checkpoint_every_steps={checkpoint_every}"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _watch(proc, workdir, num_steps, fault, attempt, begin, begin_wall, timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    attempt.returncode = proc.returncode
    attempt.wall_s = time.monotonic() - begin
    with open(log_path) as log:
        parse_log(log.read(), attempt)
    if attempt.cut_save is not None and (
        not os.path.exists(os.path.join(checkpoint_dir(workdir), attempt.cut_save))
        or int(attempt.cut_save.removesuffix(TMP_SUFFIX)) in complete_steps(workdir)
    ):
        attempt.cut_save = None  # finalised between the last look and the kill: not a cut save
    return attempt


def _watch(proc, workdir, num_steps, fault, attempt, begin, begin_wall, timeout_s) -> None:
    """Polls the log and the checkpoint directory until the fault is due, then signals."""
    deadline = begin + timeout_s
    partial, position, armed_at = "", 0, None
    started, last_step = None, None
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{attempt.log_path}: no exit after {timeout_s} s")
        time.sleep(POLL_S)
        if fault is None or attempt.signalled:
            continue
        with open(attempt.log_path) as log:  # only whole new lines, each parsed once
            log.seek(position)
            partial += log.read()
            position = log.tell()
        text, _, partial = partial.rpartition("\n")
        if started is None and (match := STARTING.search(text)):
            started = int(match.group(1))
        if steps := STEP_LINE.findall(text):
            last_step = int(steps[-1][0])
        if fault.kind == "start":
            if time.monotonic() - begin >= fault.delay_s or last_step is not None:
                _signal(proc, signal.SIGKILL, attempt)  # start-up over early: kill at its end
            continue
        if started is None or last_step is None:
            continue
        if last_step < min(started + fault.after_step, num_steps - 1):
            continue
        if fault.kind == "save":
            in_flight = saves_in_flight(workdir, since=begin_wall)
            if not in_flight:
                continue
            attempt.cut_save = in_flight[-1]
        if armed_at is None:
            armed_at = time.monotonic()
        if time.monotonic() - armed_at >= fault.delay_s:
            kind = signal.SIGTERM if fault.kind == "term" else signal.SIGKILL
            _signal(proc, kind, attempt)


def _signal(proc, signum: int, attempt: Attempt) -> None:
    if proc.poll() is None:
        proc.send_signal(signum)
        attempt.signalled = True


def run_with_faults(
    workdir: str,
    num_steps: int,
    checkpoint_every: int,
    faults: list[Fault],
    env: dict[str, str],
    max_clean_starts: int = 3,
) -> list[Attempt]:
    """Starts the run once per fault (delivering it), then until a start finishes the run."""
    attempts = []
    finished = lambda: (
        attempts and attempts[-1].returncode == 0 and attempts[-1].last_step == num_steps
    )
    starts = [(f, f"{workdir}.{i}.log") for i, f in enumerate(faults)]
    starts += [(None, f"{workdir}.end{j}.log") for j in range(max_clean_starts)]
    for fault, log_path in starts:
        if finished():
            break  # (a fault that came too late to land ends the faulted starts early)
        attempts.append(run_once(workdir, num_steps, checkpoint_every, env, fault, log_path))
    return attempts


def loss_differences(attempts: list[Attempt], reference: Attempt) -> list[str]:
    """Steps where a start logged a loss other than the reference's (re-run steps included)."""
    return [
        f"start {i} step {step}: loss {loss} != {reference.losses.get(step)}"
        for i, attempt in enumerate(attempts)
        for step, loss in sorted(attempt.losses.items())
        if loss != reference.losses.get(step)
    ]


def summarise(attempts: list[Attempt]) -> str:
    """One line per start: its fault, where it resumed, where it was stopped, what it redid."""
    lines = []
    for i, a in enumerate(attempts):
        fault = a.fault.kind if a.fault and a.signalled else "none"
        lines.append(
            f"start {i}: restored {a.restored} (newest {a.newest_before}), last step "
            f"{a.last_step}, fault {fault}, exit {a.returncode}, {a.wall_s:.1f} s"
            + (f", cut save {a.cut_save}" if a.cut_save else "")
            + (f", preempted at {a.preempted_at}" if a.preempted_at is not None else "")
        )
    return "\n".join(lines)


def redone_steps(attempts: list[Attempt]) -> int:
    """Steps trained twice: those after a killed start's last checkpoint that the next redid."""
    return sum(
        max(0, (a.last_step or 0) - (b.started_at or 0))
        for a, b in zip(attempts, attempts[1:], strict=False)
    )


def check(
    workdir: str, reference_dir: str, attempts: list[Attempt], reference: Attempt, num_steps: int
) -> list[str]:
    """Everything wrong with a faulted run against its reference (empty: it resumed exactly)."""
    found = [f"start {i}: {p}" for i, a in enumerate(attempts) for p in a.problems(num_steps)]
    found += loss_differences(attempts, reference)
    for i, (a, b) in enumerate(zip(attempts, attempts[1:], strict=False)):
        if a.preempted_at is not None and b.newest_before != a.preempted_at:
            found.append(f"start {i + 1} found {b.newest_before} newest, not {a.preempted_at}")
    if num_steps not in complete_steps(workdir):
        return [*found, f"no checkpoint at step {num_steps}"]
    differing = state_differences(
        load_state(workdir, num_steps), load_state(reference_dir, num_steps)
    )
    return found + [f"final state differs at {path}" for path in differing]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=8, help="faults to deliver")
    parser.add_argument("--steps", type=int, default=30, help="num_train_steps of the run")
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seeds the fault plan")
    parser.add_argument("--sigterm", action="store_true", help="include SIGTERM preemptions")
    parser.add_argument("--no-start-kills", action="store_true", help="no kills during start-up")
    parser.add_argument("--keep", default="", help="work here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    root = args.keep or tempfile.mkdtemp(prefix="fault_injection_")
    os.makedirs(root, exist_ok=True)
    env = child_env(os.path.join(root, "compile_cache"))
    kinds = ("step", "save") + (() if args.no_start_kills else ("start",))
    kinds += ("term",) if args.sigterm else ()
    faults = plan_faults(args.kills, args.steps, args.checkpoint_every, args.seed, kinds)
    try:
        reference_dir, faulted_dir = os.path.join(root, "reference"), os.path.join(root, "faulted")
        reference = run_once(reference_dir, args.steps, args.checkpoint_every, env)
        if reference.problems(args.steps):
            print(f"reference run failed, see {reference.log_path}")
            return 2
        print(f"reference: {reference.wall_s:.1f} s")
        attempts = run_with_faults(faulted_dir, args.steps, args.checkpoint_every, faults, env)
        print(summarise(attempts))
        delivered = [a for a in attempts if a.fault and a.signalled]
        print(
            f"{len(delivered)} faults delivered ({sum(a.cut_save is not None for a in delivered)} "
            f"cut a save), {redone_steps(attempts)} steps redone, "
            f"{sum(a.wall_s for a in attempts):.1f} s"
        )
        problems = check(faulted_dir, reference_dir, attempts, reference, args.steps)
        print("\n".join(problems) if problems else "final state bit-identical to the reference")
        return 1 if problems else 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
