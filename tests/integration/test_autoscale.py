"""Autoscaling with real processes: an idle cluster shrinks to MIN, a burst grows it (never past MAX) and every
call returns, scale to zero and back (DAG functions pinned again), `cbctl autoscale off` keeps a fixed size, and
an executor killed while the autoscaler adds executors loses no call. Windows are shortened with --policy so each
test takes seconds; the defaults' reasons are in defaults.py."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

from tests.integration.deployables.autoscale_fns import WORK_S

FNS = Path(__file__).parent / "deployables" / "autoscale_fns.py"
FAST = ("--policy", "autoscale_up_window_s=1", "--policy", "autoscale_down_window_s=3",
        "--policy", "autoscale_settle_s=1")


def autoscale_state(handle) -> dict:
    return handle.client().supervisor_status()["autoscale"]


def cpu_executors(handle) -> list[str]:
    """CPU executors the supervisor runs and that are not departing."""
    return [p["name"] for p in handle.client().supervisor_status()["processes"]
            if p["role"] == "executor" and p["state"] in ("starting", "ready", "restarting")]


def decisions(handle) -> list[str]:
    log = (handle.home / "logs" / "supervisor-0.log").read_text()
    return re.findall(r"autoscale (?:up|down): .*", log)


def burst(client, calls: int, in_flight: int, sample=None) -> list:
    """``calls`` calls of ``work`` with ``in_flight`` outstanding at a time; every result, in order."""
    results, pending, sent = [None] * calls, {}, 0
    while sent < calls or pending:
        while sent < calls and len(pending) < in_flight:
            pending[sent] = client.call_async("work", sent)
            sent += 1
        index = next(iter(pending))
        results[index] = pending.pop(index).result(timeout=60)
        if sample is not None:
            sample()
    return results


def test_an_idle_cluster_shrinks_to_min_and_each_decision_is_logged_and_counted(start_cluster):
    handle = start_cluster(executors=3, extra_args=("--autoscale", "1:3", *FAST))
    assert len(cpu_executors(handle)) == 3
    handle.wait_for(lambda: len(cpu_executors(handle)) == 1, timeout=30, interval=0.3,
                    what="the idle cluster to shrink to MIN (1)")
    state = autoscale_state(handle)
    assert (state["enabled"], state["min"], state["max"], state["target"]) == (True, 1, 3, 1)
    assert state["scale_downs"] >= 1 and state["scale_ups"] == 0
    assert all("calm" in line and "busy" in line and "queued" in line for line in decisions(handle))
    status = handle.cli("status", check=True).stdout
    assert "autoscaling 1:3 CPU executors: target 1" in status
    top = json.loads(handle.cli("top", "--json", check=True).stdout)
    assert {"min", "max", "target", "scale_ups", "scale_downs", "last_decision"} <= set(top["autoscale"])
    time.sleep(4)  # longer than the down window: MIN holds
    assert len(cpu_executors(handle)) == 1


def test_a_burst_grows_the_cluster_up_to_max_and_every_call_returns(start_cluster):
    handle = start_cluster(executors=1, extra_args=("--autoscale", "1:3", *FAST))
    handle.cli("deploy", str(FNS), check=True)
    client = handle.client()
    seen: list[int] = []
    calls = int(12 / WORK_S)  # 12 s of work for one executor, 8 calls at a time
    results = burst(client, calls, in_flight=8, sample=lambda: seen.append(len(cpu_executors(handle)))
                    if len(seen) < 2 or time.monotonic() % 0.5 < 0.05 else None)
    assert [r[1] for r in results] == list(range(calls))  # every call returned, with its own answer
    ran_on = {r[0] for r in results}
    assert len(ran_on) >= 2, ran_on  # the added executors served calls
    assert max(seen) <= 3  # never past MAX
    state = autoscale_state(handle)
    assert state["scale_ups"] >= 1 and state["target"] <= 3
    assert any("work waits" in line for line in decisions(handle))


def test_scale_to_zero_and_back_pins_dag_functions_on_the_executor_that_starts(start_cluster):
    handle = start_cluster(executors=1, extra_args=("--autoscale", "0:2", *FAST))
    handle.cli("deploy", str(FNS), check=True)
    client = handle.client()
    assert client.call("work_chain", 1, timeout=30)[1] == 2
    handle.wait_for(lambda: cpu_executors(handle) == [] and autoscale_state(handle)["departing"] == 0, timeout=30,
                    interval=0.3, what="the cluster to reach zero (its last executor gone)")
    started = time.monotonic()
    ran_on, value = client.call("work_chain", 5, timeout=30)  # parked, then placed once an executor reports
    first_call_s = time.monotonic() - started
    assert value == 6 and ran_on not in ("executor-0",)  # a fresh executor, under a fresh id
    assert first_call_s < 10, first_call_s
    assert client.call("work", 7, timeout=10)[1] == 7
    handle.wait_for(lambda: {f["name"]: f["pinned"] for f in client.list()["functions"]}.get("work_then")
                    == [ran_on], timeout=10, what="the DAG functions pinned on the new executor")
    assert any("no executor runs" in line for line in decisions(handle))


def test_autoscale_off_keeps_a_fixed_size_and_scale_is_refused_while_on(start_cluster):
    handle = start_cluster(executors=2, extra_args=("--autoscale", "0:3", *FAST))
    refused = handle.cli("scale", "--executors", "3")
    assert refused.returncode == 1 and "autoscale" in refused.stderr and "cbctl autoscale off" in refused.stderr
    handle.wait_for(lambda: cpu_executors(handle) == [], timeout=30, interval=0.3, what="zero executors")
    off = handle.cli("autoscale", "off", "--executors", "2", check=True)
    assert "autoscaling off: 2 CPU executors, fixed" in off.stdout
    handle.wait_for(lambda: len(cpu_executors(handle)) == 2, timeout=20, what="the fixed size of 2")
    time.sleep(5)  # idle past the down window: nothing departs any more
    assert len(cpu_executors(handle)) == 2
    assert autoscale_state(handle)["enabled"] is False
    assert json.loads(handle.cli("scale", "--executors", "1", "--json", check=True).stdout)["executors"] == 1
    again = handle.cli("autoscale", "1:2", "--policy", "autoscale_down_window_s=2", check=True)
    assert "autoscaling 1:2 CPU executors" in again.stdout
    bad = handle.cli("autoscale", "3:1")
    assert bad.returncode == 1 and "MIN <= MAX" in bad.stderr


def test_an_executor_killed_while_the_autoscaler_adds_executors_loses_no_call(start_cluster):
    handle = start_cluster(executors=1, extra_args=("--autoscale", "1:3", *FAST))
    handle.cli("deploy", str(FNS), check=True)
    client = handle.client()
    killed: list[int] = []

    def kill_once_growing() -> None:
        if not killed and autoscale_state(handle)["target"] > 1:
            pid = handle.pid_of("executor-0")  # the one serving since the start, mid-change
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    calls = int(8 / WORK_S)
    results = burst(client, calls, in_flight=8, sample=kill_once_growing)
    assert killed, "the autoscaler never added an executor"
    assert [r[1] for r in results] == list(range(calls))
    # the killed executor was restarted (same id, new pid) and the pool is back at the target
    handle.wait_for(lambda: handle.pid_of("executor-0") not in killed, timeout=20, what="executor-0 restarted")
    state = autoscale_state(handle)
    handle.wait_for(lambda: len(cpu_executors(handle)) == autoscale_state(handle)["target"], timeout=20,
                    what=f"the pool at its target ({state['target']})")


def test_a_load_oscillating_around_a_threshold_scales_up_once_and_holds(start_cluster):
    """3 calls in flight for 3 s, then 1 for 3 s, for 24 s: the need swings between 3 and 2 executors every
    phase, well within the 8 s down window (reports lag the load by up to two seconds, so a window barely longer
    than one phase may miss a high phase). It scales up (once or twice on the way) and never down."""
    handle = start_cluster(executors=1, extra_args=(
        "--autoscale", "1:3", "--policy", "autoscale_up_window_s=1", "--policy", "autoscale_down_window_s=8",
        "--policy", "autoscale_settle_s=1"))
    handle.cli("deploy", str(FNS), check=True)
    client = handle.client()
    pending: list = []
    started = time.monotonic()
    done = 0
    while time.monotonic() - started < 24:
        in_flight = 3 if int((time.monotonic() - started) / 3) % 2 == 0 else 1
        while len(pending) < in_flight:
            pending.append(client.call_async("work", done))
        pending.pop(0).result(timeout=30)
        done += 1
    for future in pending:
        future.result(timeout=30)
    state = autoscale_state(handle)
    assert 1 <= state["scale_ups"] <= 2 and state["scale_downs"] == 0, (state, decisions(handle))
    assert state["target"] >= 2
