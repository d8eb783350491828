"""`cbctl up` options whose promises only the README stated: `--durability` from the command line (what the
store fsyncs, and that a crash loses nothing acknowledged in every mode), and `--schedulers 2` outside the
fuzz test (both place calls, registrations made through one are served by the other)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import cbctl
from cbctl.runtime.cluster import remove_socket_dir, secure_home
from cbctl.runtime.defaults import WAL_BATCH_INTERVAL_S
from tests.conftest import EXAMPLES, RunningCluster

PUTS = 20


def store_restarted(handle: RunningCluster, old_pid: int) -> bool:
    found = handle.cluster_file()
    entry = next(p for p in found.processes if p.role == "store")
    return entry.pid != old_pid


@pytest.mark.parametrize("durability", ["always", "batch", "none"])
def test_durability_from_the_command_line(start_cluster, durability):
    handle = start_cluster(executors=1, extra_args=("--durability", durability))
    client = handle.client()
    before = client.store_stats()
    assert before["durability"] == durability
    started = time.monotonic()
    for i in range(PUTS):  # one at a time: each is acknowledged before the next is sent
        client.put(f"durable-{i}", i)
    elapsed = time.monotonic() - started
    if durability == "batch":  # the pending batch is synced once its interval has passed
        handle.wait_for(lambda: client.store_stats()["log_syncs"] > before["log_syncs"], timeout=10,
                        what="the batch fsync")
    syncs = client.store_stats()["log_syncs"] - before["log_syncs"]
    if durability == "always":
        assert syncs >= PUTS, f"{syncs} fsyncs for {PUTS} acknowledged puts"
    elif durability == "batch":
        # at most every 50 ms while the puts ran, plus the one after them
        assert 1 <= syncs <= elapsed / WAL_BATCH_INTERVAL_S + 2, (syncs, elapsed)
    else:
        assert syncs == 0, syncs

    # a process crash loses nothing acknowledged, in every mode (the log is written before the ack)
    old_pid = handle.pid_of("store-0")
    os.kill(old_pid, signal.SIGKILL)
    handle.wait_for(lambda: store_restarted(handle, old_pid), timeout=20, what="the store to be restarted")
    assert [client.get(f"durable-{i}") for i in range(PUTS)] == list(range(PUTS))
    assert client.store_stats()["durability"] == durability, "the restarted store forgot the mode"


def test_durability_must_be_one_of_the_modes(tmp_path):
    result = RunningCluster(tmp_path / "home").cli("up", "--executors", "1", "--durability", "sometimes")
    assert result.returncode == 2, result
    assert "always" in result.stderr and "batch" in result.stderr and "none" in result.stderr


@contextmanager
def pinned_to(handle: RunningCluster, index: int, home: Path) -> Iterator[cbctl.Client]:
    """A client of scheduler ``index`` only: a home holding a copy of the cluster file that names that one
    scheduler (as a client elsewhere would hold a copy; an ipc cluster needs no keys)."""
    found = json.loads((handle.home / "cluster.json").read_text())
    found["scheduler_addresses"] = [found["scheduler_addresses"][index]]
    secure_home(home)  # with its socket directory, where the client binds its reply socket
    try:
        (home / "cluster.json").write_text(json.dumps(found))
        with cbctl.connect(home) as client:
            yield client
    finally:
        remove_socket_dir(home)  # under the temp directory when the home is long


def test_two_schedulers_both_place_calls_and_share_registrations(start_cluster, tmp_path):
    handle = start_cluster(executors=2, extra_args=("--schedulers", "2"))
    assert len(handle.cluster_file().scheduler_addresses) == 2
    with pinned_to(handle, 0, tmp_path / "first") as first, pinned_to(handle, 1, tmp_path / "second") as second:
        check_two_schedulers(first, second)


def check_two_schedulers(first: cbctl.Client, second: cbctl.Client) -> None:
    first.deploy_file(EXAMPLES / "pipeline.py")  # registered through the first scheduler only

    for client in (first, second):
        before = client.cluster_info()["counters"]["dag_calls"]
        assert [client.call("pipeline", i, timeout=20) for i in range(20)] == [(i + 1) ** 2 for i in range(20)]
        assert client.call("diamond", 5, timeout=20) == 25
        info = client.cluster_info()
        assert info["counters"]["dag_calls"] == before + 21, "these calls were not placed by this scheduler"
        assert set(info["executors"]) == {"executor-0", "executor-1"}, "a scheduler misses an executor's status"

    # a function registered through the second runs when called through the first, and is listed by both
    second.register(lambda cb, x: x * 7, name="times_seven")
    assert first.call("times_seven", 6, timeout=20) == 42
    assert "times_seven" in {f["name"] for f in first.list()["functions"]}
    assert "times_seven" in {f["name"] for f in second.list()["functions"]}
