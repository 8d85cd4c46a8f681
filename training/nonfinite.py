"""The host side of `training.nonfinite_policy`: what the loop does about skipped updates.

The train step never applies an update whose loss or gradient norm is NaN / inf and reports
`metrics["nonfinite"]` (1.0 for such a step). The loop reads those flags only when it fetches
metrics anyway (every `log_every_steps`) and, under "stop", right before each checkpoint save,
so no step adds a device sync of its own.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp
from absl import logging


class NonFiniteLossError(RuntimeError):
    """A step had a non-finite loss or gradient norm under training.nonfinite_policy='stop'."""


class NonFiniteGuard:
    """Counts skipped steps ("skip") or raises NonFiniteLossError before a save ("stop")."""

    def __init__(self, policy: str, manager: ocp.CheckpointManager):
        self.policy = policy
        self.manager = manager
        self.skipped = 0  # steps skipped since this process started the run

    def check(self, steps: list[int], flags: list[float]) -> int:
        """Applies the policy to host-side `nonfinite` flags of `steps`; returns how many were
        skipped."""
        bad = [step for step, flag in zip(steps, flags, strict=True) if flag > 0]
        if not bad:
            return 0
        if self.policy == "stop":
            self._stop(bad[0])
        self.skipped += len(bad)
        logging.warning(
            "Skipped %d update(s) with a non-finite loss or gradient norm (steps %s); "
            "%d skipped so far in this run.",
            len(bad),
            ", ".join(map(str, bad)),
            self.skipped,
        )
        return len(bad)

    def check_before_save(self, pending: list[tuple[int, dict[str, jax.Array]]]) -> None:
        """Under "stop", raises if any step since the last fetch was non-finite (so no
        checkpoint is written after it); under "skip", does nothing (and fetches nothing)."""
        if self.policy != "stop" or not pending:
            return
        flags = jax.device_get([metrics["nonfinite"] for _, metrics in pending])
        self.check([step for step, _ in pending], [float(f) for f in flags])

    def _stop(self, step: int) -> None:
        self.manager.wait_until_finished()  # an earlier save in flight is a good one: finish it
        latest = self.manager.latest_step()
        where = (
            f"the last good checkpoint is step {latest} in {self.manager.directory}"
            if latest is not None
            else f"no checkpoint was saved in {self.manager.directory} before it"
        )
        raise NonFiniteLossError(
            f"Non-finite loss or gradient norm at step {step} "
            f"(training.nonfinite_policy='stop'); stopped without saving a checkpoint after it: "
            f"{where}. Resume from there with e.g. a lower learning rate, or set "
            "training.nonfinite_policy='skip' to skip such steps."
        )
