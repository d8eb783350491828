"""Commands that talk to the supervisor wait a bounded time and say why when it is stopped (SIGSTOP), and a
supervisor resumed later does not act on the requests nobody waits for any more."""

from __future__ import annotations

import os
import signal
import time

from tests.integration.test_lifecycle import all_gone, assert_one_line_error


def test_scale_and_down_against_a_stopped_supervisor_fail_in_bounded_time(start_cluster):
    handle = start_cluster(executors=1)
    supervisor = handle.cluster_file().supervisor_pid
    os.kill(supervisor, signal.SIGSTOP)
    try:
        for args in (("scale", "--executors", "2"), ("down",)):
            started = time.monotonic()
            result = handle.cli(*args, timeout=60)
            took = time.monotonic() - started
            assert_one_line_error(result, f"the supervisor (pid {supervisor}) is stopped", f"kill -CONT {supervisor}")
            assert took < 15, f"`cbctl {' '.join(args)}` took {took:.1f} s"
    finally:
        os.kill(supervisor, signal.SIGCONT)
    # resumed, it serves on, and neither the abandoned scale nor the abandoned down takes effect
    time.sleep(1.5)  # the surprise, if any, would come within the supervisor's first loop turns after SIGCONT
    status = handle.cli("status", "--json", check=True)
    assert '"executor-1"' not in status.stdout and '"executor-0"' in status.stdout
    assert handle.cli("put", "k", "1", check=True).returncode == 0
    pids = handle.pids()
    handle.cli("down", check=True)
    assert all_gone(pids)
