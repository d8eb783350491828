"""Placement by outstanding work on real clusters (cbctl/runtime/scheduler/placement.py, executor/stealing.py):

- a rendezvous (N calls on N executors, each waiting until all N have started) completes on N distinct
  executors, 20 rounds in a row, after a warm-up of mixed load, with 1 scheduler and with 2 (where the
  schedulers race and work stealing settles it);
- under a steady load of 50 ms calls, no no-op call waits behind one while an executor sits idle, counted from
  the executors' own step records.
"""

from __future__ import annotations

import collections
import time

import pytest

import cbctl
from benchmarks.placement import MixedLoad, executor_ids, records_of
from cbctl.runtime import step_records
from tests.conftest import RunningCluster
from tests.integration.shared_cluster import DEPLOYABLES

PLACEMENT_FNS = DEPLOYABLES / "placement_fns.py"
RENDEZVOUS_EXECUTORS = 6
ROUNDS = 20
WARMUP_S = 3.0


def clients_per_scheduler(handle: RunningCluster, schedulers: int) -> list[cbctl.Client]:
    """One client on each scheduler (a client picks its scheduler at random)."""
    by_scheduler: dict[str, cbctl.Client] = {}
    for _ in range(200):
        client = handle.client()
        by_scheduler.setdefault(client._scheduler_address, client)
        if len(by_scheduler) == schedulers:
            return list(by_scheduler.values())
    raise AssertionError(f"200 clients did not reach all {schedulers} schedulers")


def warm_up(clients: list[cbctl.Client], seconds: float) -> None:
    """Ordinary mixed load: a pinned 2-function DAG, calls with a reference, a DAG of a 50 ms function."""
    clients[0].put("placement/blob", b"x" * 10_000)
    work = [("bump_double", lambda i: (i,), lambda i: 2 * (i + 1)),
            ("read_ref", lambda i: (cbctl.Ref("placement/blob"),), lambda i: 10_000),
            ("nap_double", lambda i: (i,), lambda i: 2 * i)]
    deadline = time.monotonic() + seconds
    pending: collections.deque = collections.deque()
    i = 0
    while time.monotonic() < deadline or pending:
        while time.monotonic() < deadline and len(pending) < 8:
            name, args, expected = work[i % len(work)]
            pending.append((clients[i % len(clients)].call_async(name, *args(i)), expected(i)))
            i += 1
        future, expected = pending.popleft()
        assert future.result(timeout=30) == expected
    assert i > 30, f"only {i} warm-up calls"


@pytest.mark.parametrize("schedulers", [1, 2])
def test_a_rendezvous_of_n_calls_runs_on_n_distinct_executors_round_after_round(start_cluster, schedulers):
    handle = start_cluster(executors=RENDEZVOUS_EXECUTORS, extra_args=("--schedulers", str(schedulers)))
    handle.cli("deploy", str(PLACEMENT_FNS), check=True)
    clients = clients_per_scheduler(handle, schedulers)
    warm_up(clients, WARMUP_S)
    everyone = sorted(f"executor-{i}" for i in range(RENDEZVOUS_EXECUTORS))
    for round_no in range(ROUNDS):
        round_id = f"{schedulers}-{round_no}-{time.monotonic_ns()}"
        futures = [clients[i % len(clients)].call_async("rendezvous", round_id, i, RENDEZVOUS_EXECUTORS)
                   for i in range(RENDEZVOUS_EXECUTORS)]
        # each call fails by itself after RENDEZVOUS_WAIT_S if another never starts; this bounds the wait too
        ran_on = [future.result(timeout=60) for future in futures]
        assert sorted(ran_on) == everyone, f"round {round_no}: {sorted(ran_on)}"


def test_no_noop_waits_behind_a_sleeping_call_while_an_executor_is_idle(start_cluster, monkeypatch):
    monkeypatch.setenv(step_records.ENV, "1")  # `cbctl up` and every process it starts inherit it
    handle = start_cluster(executors=4)
    handle.cli("deploy", str(PLACEMENT_FNS), check=True)
    load = MixedLoad(handle.home, naps_in_flight=2, noop_pause_s=0.005, seconds=4.0).run()
    assert load.errors == [], load.errors[:5]
    assert len(load.noop_ids) > 50 and len(load.nap_ids) > 40, (len(load.noop_ids), len(load.nap_ids))
    rows = records_of(handle.home, load.noop_ids + load.nap_ids)
    recorded = {r["call_id"] for r in rows}
    assert set(load.noop_ids) <= recorded, "the executors' records lack some no-op calls"
    naps_ran = [r for r in rows if r["function"] == "nap" and r["call_id"] in set(load.nap_ids)]
    assert naps_ran and all(r["finished"] - r["started"] >= 0.045 for r in naps_ran)  # the load was real
    waited = [w for w in step_records.waited_while_idle(rows, executor_ids(handle.home))
              if w["function"] == "noop" and w["call_id"] in set(load.noop_ids)]
    assert waited == [], waited[:3]


def test_the_cloudburst_policy_is_still_there_and_queues_behind_busy_executors(start_cluster, monkeypatch):
    """The same load under `--policy placement=cloudburst`: its placement by recent calls puts no-ops behind
    naps while executors sit idle (what the default fixes), which also shows the count above can fail."""
    monkeypatch.setenv(step_records.ENV, "1")
    handle = start_cluster(executors=4, extra_args=("--policy", "placement=cloudburst"))
    handle.cli("deploy", str(PLACEMENT_FNS), check=True)
    assert handle.client().cluster_info()["policy"]["placement"] == "cloudburst"
    load = MixedLoad(handle.home, naps_in_flight=2, noop_pause_s=0.005, seconds=3.0).run()
    assert load.errors == [], load.errors[:5]
    rows = records_of(handle.home, load.noop_ids + load.nap_ids)
    waited = [w for w in step_records.waited_while_idle(rows, executor_ids(handle.home))
              if w["function"] == "noop"]
    assert waited, "Cloudburst's policy never queued a no-op behind a nap: the count cannot see what it counts"


def test_a_busy_pinned_function_is_pinned_at_once_on_an_idle_executor(start_cluster):
    handle = start_cluster(executors=4)
    handle.cli("deploy", str(PLACEMENT_FNS), check=True)
    client = handle.client()

    def locations() -> list[str]:
        return client.cluster_info()["policy"]["function_locations"].get("nap", [])

    handle.wait_for(lambda: len(locations()) == 1, timeout=10, what="nap pinned once")
    futures = [client.call_async("nap_double", i) for i in range(3)]  # three at once: two find nap's one busy
    assert [f.result(timeout=30) for f in futures] == [0, 2, 4]
    assert len(locations()) >= 2, locations()  # not after a utilization report (1 s), at once
