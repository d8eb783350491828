"""``cbctl.local()``: a cluster for the life of a block, and not one process longer, however the block ends:
normally, by an exception, by Ctrl-C, at the exit of an interpreter that never left it, or with its owner
killed. Every check of "nothing left" is by the pids the cluster ran, taken while it ran."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import cbctl
from cbctl.runtime.cluster import ClusterFile
from cbctl.runtime.process import process_alive

DEADLINE_S = 30.0


def alive(pids: list[int]) -> list[int]:
    """The pids still running a process (a zombie counts as gone: only its parent's wait is missing)."""
    return [pid for pid in pids if process_alive(pid)]


def wait_all_gone(pids: list[int], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pids), f"processes {alive(pids)} of the cluster outlived it"


def cluster_pids(cluster: cbctl.LocalCluster) -> list[int]:
    """The pids the cluster runs, checked against its cluster file: supervisor, store, scheduler(s),
    executors, all tracked by ``pids()``, which also holds the forkserver."""
    pids = cluster.pids()
    found = ClusterFile.read(cluster.home)
    assert found is not None
    assert set(found.pids()) <= set(pids), (found.pids(), pids)
    assert len(pids) > len(found.pids())  # the forkserver the children fork from is tracked too
    return pids


def test_a_block_serves_calls_then_leaves_no_process_and_no_home():
    cluster = cbctl.local(executors=2)
    with cluster as client:
        client.register(lambda cb, x: x + 1, name="inc")
        assert client.call("inc", 1, timeout=10) == 2
        client.put("k", [1, 2])
        assert cbctl.connect(cluster.home).get("k") == [1, 2]  # a plain connect() to its home works too
        pids, home = cluster_pids(cluster), cluster.home
        assert oct(home.stat().st_mode & 0o777) == "0o700"
    wait_all_gone(pids, timeout=0)  # gone when the block is left, not later
    assert not home.exists()
    with pytest.raises(cbctl.ClusterNotRunning):
        cluster.client()


def test_a_block_that_raises_stops_everything():
    cluster = cbctl.local(executors=1)
    with pytest.raises(ZeroDivisionError), cluster:
        pids, home = cluster_pids(cluster), cluster.home
        1 / 0  # noqa: B018
    wait_all_gone(pids, timeout=0)
    assert not home.exists()


def test_keyboard_interrupt_in_the_block_stops_everything():
    cluster = cbctl.local(executors=1)
    with pytest.raises(KeyboardInterrupt), cluster:
        pids, home = cluster_pids(cluster), cluster.home
        raise KeyboardInterrupt
    wait_all_gone(pids, timeout=0)
    assert not home.exists()


def test_two_clusters_at_once_are_independent():
    first, second = cbctl.local(executors=1), cbctl.local(executors=1)
    with first as one, second as two:
        assert first.home != second.home
        first_pids, second_pids = cluster_pids(first), cluster_pids(second)
        assert not set(first_pids) & set(second_pids)
        one.register(lambda cb: "first", name="which")
        two.register(lambda cb: "second", name="which")
        one.put("k", 1)
        assert (one.call("which", timeout=10), two.call("which", timeout=10)) == ("first", "second")
        with pytest.raises(cbctl.NoSuchKey):
            two.get("k")
        first.close()
        wait_all_gone(first_pids, timeout=0)
        assert two.call("which", timeout=10) == "second"  # the other one serves on
    wait_all_gone(second_pids, timeout=0)


def test_up_options_reach_the_cluster_and_a_given_home_is_kept(tmp_path):
    home = tmp_path / "home"
    cluster = cbctl.local(executors=1, schedulers=2, home=home, max_message_mb=3, policy={"locality": False})
    with cluster as client:
        found = ClusterFile.read(home)
        assert len(found.scheduler_addresses) == 2 and found.max_message_bytes == 3 << 20
        assert client.cluster_info()["policy"]["settings"]["locality"] is False
        pids = cluster_pids(cluster)
    wait_all_gone(pids, timeout=0)
    assert (home / "logs").is_dir() and ClusterFile.read(home) is None  # kept, with no cluster file


@pytest.mark.parametrize("options, message", [
    ({"executors": 0}, "at least one executor"),
    ({"executors": "2"}, "whole number"),
    ({"durability": "sometimes"}, "--durability"),
    ({"policy": {"no_such": 1}}, "unknown policy setting"),
    ({"listen": "udp://x"}, "--listen"),
])
def test_a_bad_option_is_one_clear_error_and_leaves_nothing(options, message):
    cluster = cbctl.local(**options)
    with pytest.raises(cbctl.InvalidArgument, match=message):
        cluster.start()
    assert cluster.home is not None and not cluster.home.exists()
    assert cluster.pids() == []


def test_a_started_cluster_cannot_start_again():
    cluster = cbctl.local(executors=1)
    with cluster, pytest.raises(cbctl.CbctlError, match="started already"):
        cluster.start()


# --- in a child interpreter, as a notebook kernel runs it: code from stdin, no __main__ file -------------

# The child restores Python's Ctrl-C handler: started from a shell's background job (`pytest ... &`) it inherits
# SIGINT ignored, and Python then installs no handler, so the Ctrl-C test would wait for nothing.
CHILD_PROLOGUE = """
import json, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import cbctl
cluster = cbctl.local(executors=1)
"""
REPORT = "print(json.dumps({'pids': cluster.pids(), 'home': str(cluster.home)}), flush=True)\n"


def start_child(body: str) -> tuple[subprocess.Popen, list[int], Path]:
    """A child interpreter running ``body`` from stdin; returns it once it reported its cluster's pids."""
    child = subprocess.Popen([sys.executable, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    child.stdin.write(CHILD_PROLOGUE + body)
    child.stdin.close()
    line = child.stdout.readline()  # the child's first output, once its cluster is up
    if not line:
        child.wait(DEADLINE_S)
        raise AssertionError(f"the child printed nothing (exit {child.returncode}): {child.stderr.read()}")
    report = json.loads(line)
    assert len(report["pids"]) >= 4, report
    return child, report["pids"], Path(report["home"])


def finish(child: subprocess.Popen) -> str:
    try:
        child.wait(DEADLINE_S)
    finally:
        child.kill()
    return child.stderr.read()


def test_a_child_interpreter_that_exits_inside_the_block_leaves_nothing():
    """The block is entered by hand and never left (as a notebook cell may do): atexit stops the cluster."""
    child, pids, home = start_child("client = cluster.__enter__()\nclient.put('k', 1)\n" + REPORT)
    stderr = finish(child)
    assert child.returncode == 0, stderr
    wait_all_gone(pids, timeout=0)  # the interpreter's exit waited for them
    assert not home.exists()


def test_ctrl_c_in_a_child_interpreter_inside_the_block_leaves_nothing():
    child, pids, home = start_child("with cluster:\n    " + REPORT + "    while True:\n        time.sleep(0.05)\n")
    child.send_signal(signal.SIGINT)
    stderr = finish(child)
    assert "KeyboardInterrupt" in stderr
    wait_all_gone(pids, timeout=0)
    assert not home.exists()


def test_a_killed_owner_takes_its_cluster_with_it():
    """No atexit runs after SIGKILL: the supervisor notices its owner is gone and stops the cluster."""
    child, pids, home = start_child("with cluster:\n    " + REPORT + "    time.sleep(600)\n")
    try:
        os.kill(child.pid, signal.SIGKILL)
        finish(child)
        wait_all_gone(pids)
    finally:
        # the supervisor stops the processes, but nothing removes the killed owner's temporary home: the test
        # that killed it does (the suite's leftover check found it in the temp directory on every run)
        shutil.rmtree(home, ignore_errors=True)


def test_a_fork_of_the_owner_leaving_the_block_leaves_the_cluster_alone():
    """A forked child inherits the block and the atexit handler: its exit must not stop its parent's cluster."""
    body = ("import os\n"
            "with cluster as client:\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        sys.exit(0)\n"
            "    os.waitpid(pid, 0)\n"
            "    client.register(lambda cb: 'still here', name='alive')\n"
            "    " + REPORT +
            "    print(client.call('alive', timeout=10), flush=True)\n")
    child, pids, home = start_child(body)
    assert child.stdout.readline().strip() == "still here"
    stderr = finish(child)
    assert child.returncode == 0, stderr
    wait_all_gone(pids, timeout=0)
    assert not home.exists()


def test_ctrl_c_while_the_cluster_starts_leaves_nothing():
    child = subprocess.Popen([sys.executable, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    child.stdin.write(CHILD_PROLOGUE + "cluster.start()\nprint('started', flush=True)\n")
    child.stdin.close()
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + DEADLINE_S
        # the supervisor and its forkserver are up, the cluster not yet ready
        while len(seen) < 3 and time.monotonic() < deadline:
            for proc in psutil.Process(child.pid).children(recursive=True):
                seen[proc.pid] = proc
            time.sleep(0.005)
        assert len(seen) >= 3, f"the child never started a supervisor and its forkserver: {seen}"
        home = next(Path(p.cmdline()[p.cmdline().index("--home") + 1]) for p in seen.values()
                    if "--home" in p.cmdline())
        child.send_signal(signal.SIGINT)
        stderr = finish(child)
        assert "KeyboardInterrupt" in stderr and "started" not in child.stdout.read(), stderr
        wait_all_gone(list(seen))
        assert not home.exists()
    finally:
        for proc in seen.values():
            try:
                proc.kill()
            except psutil.Error:
                pass
