"""XLA_FLAGS for tests: n simulated CPU devices, and a collective timeout a loaded machine meets.

XLA aborts the whole process ("Termination timeout ... of 40 seconds exceeded") when a collective
waits 40 s for one of the simulated devices, which a loaded 2-core machine can make it do inside
an ordinary train step; the tests allow 15 minutes.
"""

COLLECTIVE_TIMEOUT = "--xla_cpu_collective_call_terminate_timeout_seconds=900"


def cpu_devices(count: int) -> str:
    """XLA_FLAGS for `count` simulated CPU devices with the tests' collective timeout."""
    return f"--xla_force_host_platform_device_count={count} {COLLECTIVE_TIMEOUT}"
