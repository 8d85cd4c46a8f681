"""XLA_FLAGS for tests: n simulated CPU devices, and a longer CPU collective timeout.

XLA aborts the whole process when a CPU collective's rendezvous waits past
xla_cpu_collective_call_terminate_timeout_seconds (default 40 s); the tests allow 15 minutes so
that a slow rendezvous on the loaded 2-core machine cannot abort a run. It was suspected of the
"Fatal Python error: Aborted" seen in test_eval_run's 600-step fixture, but that abort recurred
with this flag (docs/PERFORMANCE.md, CI table), so its cause is still unknown.
"""

COLLECTIVE_TIMEOUT = "--xla_cpu_collective_call_terminate_timeout_seconds=900"


def cpu_devices(count: int) -> str:
    """XLA_FLAGS for `count` simulated CPU devices with the tests' collective timeout."""
    return f"--xla_force_host_platform_device_count={count} {COLLECTIVE_TIMEOUT}"
