"""One start of the fault-injected run (tools/fault_injection.py): the fault it gets (`Fault`),
what it did and what it did wrong (`Attempt`, filled from its log: where it started, the
checkpoint it restored, each step's loss, a preemption), and the checkpoints on disk (finalised,
in flight, restored as numpy and compared bit for bit).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal

import numpy as np

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax writes a save here, then renames it to <step>
KINDS = ("step", "save", "start", "term")

STEP_LINE = re.compile(r"logging_writer\.py:\d+\] \[(\d+)\] .*?\bloss=([^,\s]+)")
STARTING = re.compile(r"Starting at step (\d+) of")
_RESTORING = re.compile(r"Restoring checkpoint at step (\d+)")
_PREEMPTED = re.compile(r"Preempted: saved checkpoint at step (\d+)")
_FALLBACK = re.compile(r"Checkpoint at step \d+ .* failed to restore")


@dataclasses.dataclass(frozen=True)
class Fault:
    """One fault to deliver to a start of the run."""

    kind: str  # one of KINDS
    after_step: int  # steps after the resumed one: signal then ("save": at the next save)
    delay_s: float  # extra wait before the signal ("start": seconds after the process began)


@dataclasses.dataclass
class Attempt:
    """What one start of the run did."""

    fault: Fault | None
    log_path: str
    newest_before: int | None  # newest complete checkpoint on disk when it started
    returncode: int | None = None
    wall_s: float = 0.0
    started_at: int | None = None  # from "Starting at step N"
    restored: int | None = None  # from "Restoring checkpoint at step N"
    last_step: int | None = None  # the last step it logged
    signalled: bool = False  # the fault was delivered while the process ran
    cut_save: str | None = None  # "save" faults: the tmp dir left behind by the cut save
    preempted_at: int | None = None  # "term" faults: from "Preempted: saved checkpoint at step N"
    fallbacks: int = 0  # checkpoints that failed to restore (a kill must never leave one)
    losses: dict[int, str] = dataclasses.field(default_factory=dict)  # step -> logged loss

    def problems(self, num_steps: int) -> list[str]:
        """What this start did wrong (empty when it behaved)."""
        found = []
        want = self.newest_before
        # A start killed during start-up may not have logged where it starts or what it restored.
        cut_short = self.signalled and self.fault is not None and self.fault.kind == "start"
        if (self.started_at is not None or not cut_short) and self.started_at != (want or 0):
            found.append(f"started at step {self.started_at}, newest checkpoint {want}")
        if want is not None and (self.restored is not None or not cut_short):
            if self.restored != want:
                found.append(f"logged restore of {self.restored}, newest checkpoint {want}")
        if self.fallbacks:
            found.append(f"{self.fallbacks} finalised checkpoint(s) failed to restore")
        if self.fault is None or not self.signalled:
            if self.returncode != 0 or self.last_step != num_steps:
                found.append(f"exit {self.returncode} at step {self.last_step} without a fault")
        elif self.fault.kind == "term" and (self.preempted_at or self.last_step != num_steps):
            if self.returncode != 0:  # (a SIGTERM during the last step may just let it finish)
                found.append(f"SIGTERM gave exit status {self.returncode}, not 0")
            if self.preempted_at is None:
                found.append("SIGTERM logged no 'Preempted: saved checkpoint at step N'")
        elif self.returncode != -signal.SIGKILL:
            found.append(f"SIGKILL gave exit status {self.returncode}")
        return found


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


def complete_steps(workdir: str) -> list[int]:
    """Steps with a finalised checkpoint directory (Orbax renames a save into place when done)."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def saves_in_flight(workdir: str, since: float = 0.0) -> list[str]:
    """Checkpoint directories being written, oldest step first: tmp directories created at or
    after time `since` (earlier ones are left over from saves cut before this start)."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        return []
    found = []
    for name in (n for n in os.listdir(directory) if n.endswith(TMP_SUFFIX)):
        try:
            if os.stat(os.path.join(directory, name)).st_ctime >= since:
                found.append(name)
        except FileNotFoundError:  # finalised (renamed) while we looked
            continue
    return sorted(found, key=lambda name: int(name.removesuffix(TMP_SUFFIX)))


def parse_log(text: str, attempt: Attempt) -> None:
    """Fills `attempt`'s fields that its log tells: steps and losses, start, restore,
    restore fallbacks, preemption."""
    for match in STEP_LINE.finditer(text):
        attempt.losses[int(match.group(1))] = match.group(2)
        attempt.last_step = int(match.group(1))
    starting, restoring = STARTING.findall(text), _RESTORING.findall(text)
    attempt.started_at = int(starting[0]) if starting else None
    attempt.restored = int(restoring[-1]) if restoring else None  # the last one tried
    attempt.fallbacks = len(_FALLBACK.findall(text))
    preempted = _PREEMPTED.findall(text)
    attempt.preempted_at = int(preempted[-1]) if preempted else None


def load_state(workdir: str, step: int) -> dict:
    """The checkpointed train state at `step` as numpy arrays."""
    import jax  # noqa: PLC0415 (the driver itself needs no JAX until it compares)
    import orbax.checkpoint as ocp  # noqa: PLC0415

    path = os.path.join(checkpoint_dir(os.path.abspath(workdir)), str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, restore_args=as_numpy)


def state_differences(a: dict, b: dict) -> list[str]:
    """Leaf paths where two restored states differ in structure, dtype, shape or any bit."""
    import jax  # noqa: PLC0415

    if jax.tree.structure(a) != jax.tree.structure(b):
        return [f"structure {jax.tree.structure(a)} != {jax.tree.structure(b)}"]
    found = []
    for (path, x), y in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            found.append(jax.tree_util.keystr(path))
    return found
