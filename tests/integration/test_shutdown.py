"""Graceful shutdown: SIGTERM or SIGINT sent straight to any process of a cluster. A child (store, scheduler,
executor) finishes what it holds, exits 0 with a "stopped" line and no traceback, and the supervisor restarts it
as it would after a crash (the cluster stays whole). The supervisor itself treats either signal as `cbctl down`.
And `cbctl down` with calls in flight: each call returns its result or fails with a typed error, none hangs.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import cbctl
from cbctl.runtime import cluster
from tests.conftest import EXAMPLES, RunningCluster, run_cli

SIGNALS = [signal.SIGTERM, signal.SIGINT]


def log_text(home: Path, name: str) -> str:
    role, index = name.rsplit("-", 1)
    path = cluster.log_path(home, role, int(index))
    return path.read_text(errors="replace") if path.exists() else ""


def assert_no_traceback(home: Path) -> None:
    for path in sorted((home / "logs").glob("*.log")):
        text = path.read_text(errors="replace")
        assert "Traceback" not in text, f"{path.name}:\n{text[max(0, text.index('Traceback') - 500):][:3000]}"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def restarted(handle: RunningCluster, name: str, old_pid: int) -> bool:
    status = handle.client().supervisor_status()
    (entry,) = [p for p in status["processes"] if p["name"] == name]
    return entry["pid"] != old_pid and entry["state"] == "ready"


def knows_every_executor(client: cbctl.Client) -> bool:
    statuses = client.cluster_info()["executors"]
    return all(statuses.get(e, {}).get("running") for e in ("executor-0", "executor-1"))


@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signalled_child_stops_cleanly_and_is_restarted(start_cluster, sig):
    handle = start_cluster(executors=2)
    handle.cli("deploy", str(EXAMPLES / "pipeline.py"), check=True)
    client = handle.client()
    for name, stopped_line in (("store-0", "store stopped"), ("scheduler-0", "scheduler stopped"),
                               ("executor-1", "executor stopped")):
        client.put(f"before-{name}", name)
        pid = handle.pid_of(name)
        os.kill(pid, sig)
        handle.wait_for(lambda pid=pid: gone(pid), timeout=30, what=f"{name} to exit on {sig.name}")
        handle.wait_for(lambda name=name, pid=pid: restarted(handle, name, pid), timeout=30,
                        what=f"the supervisor to restart {name}")
        # a restarted scheduler places calls once every executor's status has reached it (within a status
        # interval); a call before that fails with NoExecutorAvailable
        handle.wait_for(lambda: knows_every_executor(client), timeout=15, what="the scheduler to hear every executor")
        # it exited 0, after saying it stopped (the log of a process is appended to across restarts)
        assert f"{name} (pid {pid}) exited with code 0" in log_text(handle.home, "supervisor-0")
        text = log_text(handle.home, name)
        assert f"signal {int(sig)}: stopping" in text and stopped_line in text, text[-2000:]
        # the cluster is whole: what was written before the stop is there, calls and writes work
        assert client.get(f"before-{name}") == name
        assert client.call("pipeline", 3, timeout=30) == 16
        assert client.call("diamond", 5, timeout=30) == 25
    status = client.supervisor_status()
    assert {p["name"]: p["restarts"] for p in status["processes"]} == {
        "store-0": 1, "scheduler-0": 1, "executor-0": 0, "executor-1": 1}
    assert_no_traceback(handle.home)


@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signalled_supervisor_stops_the_cluster_like_down(start_cluster, sig):
    handle = start_cluster(executors=2)
    handle.cli("deploy", str(EXAMPLES / "pipeline.py"), check=True)
    client = handle.client()
    client.put("durable", [1, 2, 3])
    found = handle.cluster_file()
    pids = handle.pids()
    client.close()
    os.kill(found.supervisor_pid, sig)
    handle.wait_for(lambda: all(gone(pid) for pid in pids), timeout=90, what=f"every process to exit on {sig.name}")
    assert not (handle.home / "cluster.json").exists()
    assert "cluster stopped" in log_text(handle.home, "supervisor-0")
    for name, line in (("store-0", "store stopped"), ("scheduler-0", "scheduler stopped"),
                       ("executor-0", "executor stopped"), ("executor-1", "executor stopped")):
        assert line in log_text(handle.home, name), name
    assert_no_traceback(handle.home)
    result = handle.cli("status")
    assert result.returncode == 1 and "cbctl up" in result.stderr
    # the store flushed: a new cluster in the same home has the value
    run_cli(handle.home, "up", "--executors", "1", check=True, timeout=90)
    assert handle.client().get("durable") == [1, 2, 3]


def test_down_with_calls_in_flight_finishes_or_fails_each_clearly(start_cluster):
    def slow(cb: Any, x: int) -> int:  # local: travels by value, so executors need not import this module
        time.sleep(0.1)
        return x

    handle = start_cluster(executors=2)
    client = handle.client()
    client.register(slow)
    assert client.call("slow", 0, timeout=30) == 0
    futures = [(x, client.call_async("slow", x)) for x in range(20)]  # about a second of work per executor
    down = subprocess.Popen([sys.executable, "-m", "cbctl.cli", "down"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "CBCTL_HOME": str(handle.home)})
    try:
        # and more calls while it stops: they meet departing executors, a stopping scheduler, or no cluster
        deadline = time.monotonic() + 3
        x = 100
        while time.monotonic() < deadline and down.poll() is None:
            futures.append((x, client.call_async("slow", x)))
            x += 1
            time.sleep(0.05)
        outcomes: dict[int, Any] = {}
        all_answered: list[float] = []

        def wait_all() -> None:
            for x, future in futures:
                try:
                    outcomes[x] = future.result()  # no timeout: the client must not wait for ever
                except cbctl.CbctlError as exc:
                    outcomes[x] = exc
            all_answered.append(time.monotonic())

        waiter = threading.Thread(target=wait_all, daemon=True)
        waiter.start()
        _, err = down.communicate(timeout=90)
        down_returned = time.monotonic()  # every process is gone, the supervisor too
        waiter.join(90)
        assert not waiter.is_alive(), f"calls still waiting 90 s after `cbctl down`: {len(outcomes)} done"
    finally:
        if down.poll() is None:
            down.kill()
            down.communicate()
    assert down.returncode == 0, err
    # "ClusterNotRunning, within about a second, for a call still waiting when the supervisor has gone"
    # (the bad case: a call waits for ever, or for its timeout)
    assert all_answered[0] - down_returned < 5, f"calls answered {all_answered[0] - down_returned:.1f} s after down"
    finished = [x for x, outcome in outcomes.items() if outcome == x]
    failed = {x: outcome for x, outcome in outcomes.items() if isinstance(outcome, cbctl.CbctlError)}
    kinds = collections.Counter(type(e).__name__ for e in failed.values())
    print(f"down with calls in flight: {len(finished)} finished, failures: {dict(kinds)}, all answered "
          f"{all_answered[0] - down_returned:+.2f} s after down returned")
    assert len(finished) + len(failed) == len(futures), outcomes
    assert all(x in finished for x in range(20)), "a call the executors had before `down` did not finish"
    for exc in failed.values():  # typed, and it says what happened
        assert type(exc) in (cbctl.NoExecutorAvailable, cbctl.ClusterNotRunning), repr(exc)
        assert str(exc)
