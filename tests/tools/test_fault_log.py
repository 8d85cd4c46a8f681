"""tools/fault_log.py on a written log and checkpoint directory (no training run: fast)."""

import os
import signal

from tools import fault_log

LOG = """\
I0101 12:00:00.000001 1 checkpointing.py:79] Restoring checkpoint at step 6 from /w/checkpoints
I0101 12:00:01.000001 1 loop.py:197] Starting at step 6 of 24
I0101 12:00:02.000001 1 logging_writer.py:48] [7] learning_rate=0.0007, loss=0.25, grad_norm=1.5
I0101 12:00:03.000001 1 logging_writer.py:48] [8] learning_rate=0.0008, loss=0.125
W0101 12:00:04.000001 1 loop.py:241] Preempted: saved checkpoint at step 8 in /w/checkpoints
"""


def test_parse_log_reads_start_restore_losses_and_preemption():
    attempt = fault_log.Attempt(fault_log.Fault("term", 2, 0.0), "start.log", newest_before=6)
    fault_log.parse_log(LOG, attempt)
    assert (attempt.started_at, attempt.restored, attempt.last_step) == (6, 6, 8)
    assert attempt.losses == {7: "0.25", 8: "0.125"}
    assert attempt.preempted_at == 8 and attempt.fallbacks == 0


def test_problems_name_a_wrong_restore_and_an_unexpected_exit():
    attempt = fault_log.Attempt(None, "start.log", newest_before=6)
    fault_log.parse_log(LOG.replace("checkpoint at step 6", "checkpoint at step 3"), attempt)
    attempt.returncode = -signal.SIGKILL
    assert attempt.problems(24) == [
        "logged restore of 3, newest checkpoint 6",
        f"exit {-signal.SIGKILL} at step 8 without a fault",
    ]
    attempt.restored, attempt.returncode, attempt.last_step = 6, 0, 24
    assert attempt.problems(24) == []


def test_complete_steps_and_saves_in_flight(tmp_path):
    directory = fault_log.checkpoint_dir(str(tmp_path))
    for name in ("3", "12", "6", f"9{fault_log.TMP_SUFFIX}", f"15{fault_log.TMP_SUFFIX}"):
        os.makedirs(os.path.join(directory, name))
    assert fault_log.complete_steps(str(tmp_path)) == [3, 6, 12]
    assert fault_log.saves_in_flight(str(tmp_path)) == [
        f"9{fault_log.TMP_SUFFIX}",
        f"15{fault_log.TMP_SUFFIX}",
    ]
    assert fault_log.saves_in_flight(str(tmp_path), since=float("inf")) == []
    assert fault_log.complete_steps(str(tmp_path / "missing")) == []
