"""kill -9 each role of a cluster, in turn, under a steady load of 4 client threads calling a 2-function DAG that
writes to the store (and putting keys themselves): every call ends with its right answer or a CbctlError within
its timeout, every acknowledged write is readable afterwards, and a new call is served within 5 s of the kill.
What a caller sees for each role is in the README, "When a process dies"."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import psutil
import pytest

from tests.conftest import RunningCluster
from tests.faults.steady_load import (
    FAULT_FNS,
    RECOVERY_S,
    SteadyLoad,
    check_calls,
    check_every_write_readable,
    kill,
    seconds_until_served,
    wait_for_calls,
)

#: Calls the load makes before the kill (so the kill lands mid-load) and after it (so the load goes on).
CALLS_BEFORE = 40
CALLS_AFTER = 40
#: Seconds a scheduler is stopped (SIGSTOP) before it is killed: every load thread sends its next call meanwhile.
STOPPED_S = 0.3


def deployed_cluster(start_cluster, extra_args: tuple[str, ...] = ()) -> RunningCluster:
    handle = start_cluster(executors=2, extra_args=extra_args)
    handle.cli("deploy", str(FAULT_FNS), check=True)
    return handle


def scheduler_counters(handle: RunningCluster) -> dict:
    return handle.client().cluster_info()["counters"]


def kill_under_load(handle: RunningCluster, name: str,
                    prepare: Callable[[SteadyLoad], None] | None = None) -> None:
    """kill -9 ``name`` mid-load (after ``prepare``, if given): every call and put then ends with its right answer,
    a new call is served within RECOVERY_S, and every acknowledged write reads back."""
    with SteadyLoad(handle) as load:
        wait_for_calls(load, CALLS_BEFORE)
        probe = handle.client()
        if prepare is not None:
            prepare(load)
        _, killed_at = kill(handle, name)
        recovery = seconds_until_served(probe, killed_at)
        wait_for_calls(load, load.calls_done() + CALLS_AFTER)
        record = load.stop()
    print(f"{name} killed: served again after {recovery:.2f} s; slowest call {record.slowest_s:.2f} s; "
          f"{record.answers} answers, {len(record.errors)} errors")
    check_calls(record)
    assert not record.errors, f"a call or put failed across the kill of {name}: {record.errors[:3]}"
    assert recovery < RECOVERY_S
    check_every_write_readable(handle.client(), record)


@pytest.mark.parametrize("listen", [(), ("--listen", "tcp://127.0.0.1")], ids=["ipc", "tcp-curve"])
def test_an_executor_killed_mid_call_costs_no_call(start_cluster, listen):
    """Its calls are dispatched again on the other executor: every caller gets its right answer. On TCP the
    supervisor's word to the schedulers must pass CURVE like every other frame."""
    handle = deployed_cluster(start_cluster, listen)
    kill_under_load(handle, "executor-0")
    assert scheduler_counters(handle)["retried_calls"] >= 1, "the kill hit no call: the test proved nothing"


def test_a_scheduler_killed_mid_call_costs_no_call(start_cluster):
    """Calls it had dispatched finish (results go straight to the client); those it had not are sent again by
    the client once the supervisor has restarted it."""
    handle = deployed_cluster(start_cluster)

    def stop_it_first(load: SteadyLoad) -> None:
        # stopped first, so that calls are sure to be in its socket, read by no one, when it dies: only the
        # clients' resend can bring those back (a plain kill mostly hits calls already dispatched)
        os.kill(handle.pid_of("scheduler-0"), signal.SIGSTOP)
        stuck = load.calls_done()
        time.sleep(STOPPED_S)
        assert load.calls_done() - stuck <= 4, "calls went on with the scheduler stopped"  # 1 dispatched each

    kill_under_load(handle, "scheduler-0", stop_it_first)


def test_a_store_killed_mid_write_loses_no_acknowledged_write(start_cluster):
    """Puts (the clients' and the functions') wait for the restarted store, which replays its log."""
    kill_under_load(deployed_cluster(start_cluster), "store-0")


@pytest.mark.parametrize("status_first", [True, False], ids=["status-then-up", "up"])
def test_a_killed_supervisor_is_reported_and_up_recovers_keys_and_registrations(start_cluster, status_first):
    """The children serve on without it; `cbctl status` says it crashed (and stops the orphans); `cbctl up` in
    the same home (with or without that status first) brings back every key and registration."""
    handle = deployed_cluster(start_cluster)
    registered_before = handle.client().list()
    with SteadyLoad(handle) as load:
        wait_for_calls(load, CALLS_BEFORE)
        probe = handle.client()
        old_pids = handle.pids()[1:]
        os.kill(handle.cluster_file().supervisor_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        recovery = seconds_until_served(probe, killed_at)
        done = load.calls_done()
        wait_for_calls(load, done + CALLS_AFTER)
        record = load.stop()
    check_calls(record)
    assert not record.errors, f"a call failed while the children served on: {record.errors[:3]}"
    assert recovery < RECOVERY_S
    handle.close_clients()

    if status_first:
        status = handle.cli("status")
        assert status.returncode != 0 and "crashed" in (status.stdout + status.stderr), status
        orphans = [pid for pid in old_pids if _alive(pid)]
        assert not orphans, f"children of the dead supervisor still run after `cbctl status`: {orphans}"
    started = time.monotonic()
    start_cluster(executors=2, home=handle.home)
    up_s = time.monotonic() - started
    orphans = [pid for pid in old_pids if _alive(pid)]
    assert not orphans, f"children of the dead supervisor still run after `cbctl up`: {orphans}"
    print(f"supervisor killed: children served on (a call after {recovery:.2f} s); `cbctl up` took {up_s:.1f} s; "
          f"{record.answers} answers, {len(record.errors)} errors")
    registered_after = handle.client().list()
    assert _names(registered_after) == _names(registered_before)
    check_every_write_readable(handle.client(), record)
    assert handle.client().call("fault_chain", "after-up", 5, timeout=10) == 11


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _names(listing: dict) -> dict:
    return {"functions": sorted(f["name"] for f in listing["functions"]),
            "dags": sorted(json.dumps([d["name"], d.get("functions")]) for d in listing["dags"])}
