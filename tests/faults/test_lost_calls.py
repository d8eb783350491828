"""Calls that cannot be saved: a function that kills every executor it runs on fails with ``CallLost`` (naming
the call, the function and what died) within its timeout; and the schedulers find a dead executor by its pid
when no supervisor is left to tell them."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cbctl.errors import CallLost
from cbctl.runtime.defaults import CALL_MAX_ATTEMPTS
from tests.faults.steady_load import (
    FAULT_FNS,
    SteadyLoad,
    check_calls,
    check_every_write_readable,
    kill,
    wait_for_calls,
)

CALL_TIMEOUT_S = 30.0


def test_a_function_that_kills_its_executor_every_time_fails_with_call_lost(start_cluster):
    handle = start_cluster(executors=2)
    handle.cli("deploy", str(FAULT_FNS), check=True)
    client = handle.client()
    started = time.monotonic()
    with pytest.raises(CallLost) as raised:
        client.call("crash_executor", 1, timeout=CALL_TIMEOUT_S)
    took = time.monotonic() - started
    message = str(raised.value)
    print(f"CallLost after {took:.1f} s: {message}")
    assert "crash_executor" in message and "executor-" in message and f"{CALL_MAX_ATTEMPTS} times" in message
    counters = client.cluster_info()["counters"]
    assert counters["lost_calls"] == 1 and counters["retried_calls"] == CALL_MAX_ATTEMPTS - 1
    # and the cluster serves on, on the restarted executors
    handle.wait_for(lambda: client.call("fault_chain", "after", 1, timeout=10) == 3, timeout=15,
                    what="a call after the crashes")


def test_an_executor_dying_while_no_supervisor_watches_costs_no_call(start_cluster):
    """The supervisor is dead, so nothing restarts the executor or says it died: the scheduler notices its pid
    is gone (within a policy update) and dispatches its calls to the other executor."""
    handle = start_cluster(executors=2)
    handle.cli("deploy", str(FAULT_FNS), check=True)
    with SteadyLoad(handle) as load:
        wait_for_calls(load, 40)
        os.kill(handle.cluster_file().supervisor_pid, signal.SIGKILL)
        kill(handle, "executor-0")
        done = load.calls_done()
        wait_for_calls(load, done + 40)
        record = load.stop()
        client = load.clients[0]  # connected before: a new client would find the supervisor dead and stop all
    print(f"executor killed without a supervisor: slowest call {record.slowest_s:.2f} s; "
          f"{record.answers} answers, {len(record.errors)} errors")
    check_calls(record)
    assert not record.errors, f"a call failed although the other executor could run it: {record.errors[:3]}"
    assert client.cluster_info()["counters"]["retried_calls"] >= 1
    check_every_write_readable(client, record)


def test_a_scheduler_forgets_the_calls_its_clients_have_finished(start_cluster):
    """Clients report their finished calls on their next call, so the table of calls in flight stays as small
    as the calls really in flight, with no message of its own (or else it would grow by every call for 60 s)."""
    handle = start_cluster(executors=2)
    handle.cli("deploy", str(FAULT_FNS), check=True)
    client = handle.client()
    futures = [client.call_async("fault_chain", f"batch-{i}", i) for i in range(8)]
    assert [f.result(timeout=30) for f in futures] == [2 * i + 1 for i in range(8)]
    for i in range(30):
        assert client.call("fault_chain", f"seq-{i}", i, timeout=10) == 2 * i + 1
    stored = client.call_async("fault_chain", "stored", 4, store_result=True)
    assert stored.result(timeout=10) == 9
    assert client.call("fault_chain", "last", 1, timeout=10) == 3
    info = client.cluster_info()
    assert info["calls_remembered"] <= 1, info["calls_remembered"]  # the last call, which nothing reported yet
    assert info["calls_waiting"] == 0


def test_an_executor_killed_under_a_fan_in_dag_leaves_no_join_behind(start_cluster):
    """A join never mixes two attempts of a call, and what an older attempt left waiting on the surviving (or
    restarted) executors is dropped at once, not after the 600 s join timeout."""
    handle = start_cluster(executors=2)
    handle.cli("deploy", str(FAULT_FNS), check=True)
    pins = {f["name"]: f["pinned"] for f in handle.client().list()["functions"]}
    # the executor of the right branch, so the left one's results wait in joins elsewhere when it dies
    victim = next((e for e in pins["fan_right"] if e not in pins["fan_merge"]), pins["fan_right"][0])
    with SteadyLoad(handle, dag="fault_fan") as load:
        wait_for_calls(load, 40)
        kill(handle, victim)
        done = load.calls_done()
        wait_for_calls(load, done + 40)
        record = load.stop()
    check_calls(record)
    assert not record.errors, f"a call failed although the other executor could run it: {record.errors[:3]}"
    client = handle.client()
    assert client.cluster_info()["counters"]["retried_calls"] >= 1

    def joins_left() -> dict:
        executors = client.cluster_info()["executors"]
        return {e: s["metrics"].get("pending_joins") for e, s in executors.items() if s["status_age_s"] < 1.5}

    # statuses come once a second: wait for one from each executor, taken after the load stopped
    handle.wait_for(lambda: len(joins_left()) == 2 and all(n == 0 for n in joins_left().values()), timeout=10,
                    what="no partial joins left on the executors")
    check_every_write_readable(client, record)
