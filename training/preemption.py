"""Preemption: notice SIGTERM, so the loop can checkpoint the step it is at and return.

Single process: a SIGTERM handler that only sets a flag (no I/O, no JAX calls inside a signal
handler); the loop reads the flag, a plain Python bool, after every step. Multi-process: every
process must stop at the same step (saving is collective), so the loop asks
`multihost_utils.reached_preemption_sync_point(step)`, the preemption service that
`jax.distributed.initialize` starts: it hears the scheduler's SIGTERM itself and agrees on one
step across processes. No Python handler is installed then, since it would replace that service's.
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Context manager: while entered, SIGTERM asks the loop to checkpoint and stop.

    The previous handler is put back on exit, also when the loop raises.
    """

    def __init__(self, process_count: int | None = None):
        self._process_count = jax.process_count() if process_count is None else process_count
        self._requested = False
        self._previous = None
        self._installed = False
        self._sync_available = self._process_count > 1

    def __enter__(self) -> PreemptionWatcher:
        if self._process_count > 1:
            return self  # the distributed preemption service owns SIGTERM
        if threading.current_thread() is not threading.main_thread():
            logging.warning("Not on the main thread: SIGTERM will not checkpoint before exiting.")
            return self
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self._requested = True

    def requested(self) -> bool:
        """Whether this process received SIGTERM while the watcher was entered."""
        return self._requested

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint `step` and return; the same answer on every process.

        Called once per step, in step order. Multi-process runs without the preemption service
        (e.g. `jax_enable_preemption_service` off) log one warning and never stop early.
        """
        if self._process_count == 1:
            return self._requested
        if not self._sync_available:
            return False
        try:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        except RuntimeError as error:  # no preemption sync manager in this distributed client
            self._sync_available = False
            logging.warning(
                "Preemption sync unavailable (%s): SIGTERM will end this multi-process run "
                "without a final checkpoint.",
                error,
            )
            return False
