"""Faults across hosts: a whole host lost (its processes killed, its link cut), a link that drops for 2 s, one cut
off past the bound (lost, then back with fresh executors), and a long call that silences an executor. The head
judges a host by its node supervisor's heartbeats alone."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from cbctl.runtime.cluster import ClusterFile
from cbctl.runtime.defaults import NODE_LOST_AFTER_S
from tests.hosts.cluster import TwoHosts, cli, python
from tests.hosts.netns import Lab

LOAD = """
import json, sys, time, cbctl
seconds, in_flight = float(sys.argv[1]), int(sys.argv[2])
results, errors, started = [], [], time.monotonic()
with cbctl.connect() as c:
    c.register(lambda cb, x: (__import__("time").sleep(0.02), cb.getid())[1], name="slow_who")
    print("ready", flush=True)
    while time.monotonic() - started < seconds:
        futures = [c.call_async("slow_who", i) for i in range(in_flight)]
        for f in futures:
            try:
                results.append([round(time.monotonic() - started, 2), f.result(timeout=40)])
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    info = c.cluster_info()
print(json.dumps({"results": results, "errors": errors, "counters": info["counters"]}))
"""


@pytest.fixture
def hosts(lab3: Lab, tmp_path: Path) -> TwoHosts:
    hosts = TwoHosts(lab3, tmp_path)
    hosts.up(head_executors=1)
    hosts.join(executors=2)
    return hosts


def start_load(hosts: TwoHosts, seconds: float, in_flight: int = 6):
    load = hosts.head.start([sys.executable, "-c", LOAD, str(seconds), str(in_flight)],
                            env={"CBCTL_HOME": str(hosts.head_home)}, stdout=-1, text=True)
    assert load.stdout.readline().strip() == "ready"
    return load


def finish_load(load) -> dict:
    try:
        out, _ = load.communicate(timeout=120)
    finally:
        if load.poll() is None:
            load.kill()
    return json.loads(out.strip().splitlines()[-1])


def node_executors(hosts: TwoHosts) -> dict[str, int]:
    found = ClusterFile.read(hosts.head_home)
    assert found is not None
    return {f"{p.host}/executor-{p.index}": p.pid for p in found.processes if p.host}


def test_a_lost_host_is_detected_within_the_bound_and_its_calls_run_elsewhere(hosts: TwoHosts) -> None:
    assert len(node_executors(hosts)) == 2
    load = start_load(hosts, seconds=12)
    time.sleep(2)  # load, not synchronisation: calls run on every host when the host goes
    hosts.node.kill()
    hosts.node.cut_link()
    lost_at = time.monotonic()
    deadline = lost_at + NODE_LOST_AFTER_S + 10
    while node_executors(hosts) and time.monotonic() < deadline:
        time.sleep(0.05)
    detected_after = time.monotonic() - lost_at
    assert not node_executors(hosts), "the head did not notice the lost host"
    print(f"lost host detected after {detected_after:.2f} s (bound {NODE_LOST_AFTER_S} s)")
    assert detected_after < NODE_LOST_AFTER_S + 1.5
    report = finish_load(load)
    assert report["errors"] == []
    ran_on = {who for _, who in report["results"]}
    assert f"{hosts.node.address}/executor-0" in ran_on and "executor-0" in ran_on
    assert report["counters"]["executors_lost"] == 2
    assert report["counters"]["lost_calls"] == 0
    late = [t for t, who in report["results"] if t > 2 + detected_after + 1]
    assert late and all(who == "executor-0" for t, who in report["results"] if t > 2 + detected_after + 1)
    status = json.loads(cli(hosts.head, hosts.head_home, "status", "--json", check=True).stdout)
    assert [h["host"] for h in status["health"]["hosts"]] == [hosts.head.address]


def test_a_link_down_for_2_s_loses_no_call_and_the_host_stays(hosts: TwoHosts) -> None:
    before = node_executors(hosts)
    load = start_load(hosts, seconds=10)
    time.sleep(2)
    hosts.node.cut_link()
    cut_at = time.monotonic()
    time.sleep(2.0)  # the fault itself: the link is down for 2 s
    hosts.node.restore_link()
    restored_at = time.monotonic() - cut_at
    report = finish_load(load)
    assert report["errors"] == []
    assert report["counters"]["executors_lost"] == 0 and report["counters"]["lost_calls"] == 0
    assert node_executors(hosts) == before  # the same processes: nothing restarted
    after = {who for t, who in report["results"] if t > 2 + restored_at + 2}
    assert set(before) & after, f"no call ran on the node after the link came back: {after}"


def test_one_long_call_silences_an_executor_but_not_its_host(hosts: TwoHosts) -> None:
    script = """
import json, cbctl
with cbctl.connect() as c:
    c.register(lambda cb, x: (__import__("time").sleep(x), cb.getid())[1], name="nap")
    futures = [c.call_async("nap", %s) for _ in range(6)]
    ran = [f.result(timeout=60) for f in futures]
    print(json.dumps({"ran": ran, "counters": c.cluster_info()["counters"]}))
""" % (NODE_LOST_AFTER_S + 2)
    out = python(hosts.head, hosts.head_home, script, timeout=120)
    assert any(who.startswith(f"{hosts.node.address}/") for who in out["ran"])
    assert out["counters"]["executors_lost"] == 0 and out["counters"]["retried_calls"] == 0


def test_a_host_cut_off_past_the_bound_is_lost_then_starts_afresh(hosts: TwoHosts) -> None:
    before = node_executors(hosts)
    load = start_load(hosts, seconds=12 + NODE_LOST_AFTER_S)
    time.sleep(1)
    hosts.node.cut_link()
    deadline = time.monotonic() + NODE_LOST_AFTER_S + 10
    while node_executors(hosts) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not node_executors(hosts), "the head did not declare the silent host lost"
    hosts.node.restore_link()
    deadline = time.monotonic() + 30
    while len(node_executors(hosts)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    after = node_executors(hosts)
    assert set(after) == set(before) and not set(after.values()) & set(before.values())  # new processes
    report = finish_load(load)
    assert report["errors"] == []
    assert report["counters"]["executors_lost"] == 2 and report["counters"]["lost_calls"] == 0
    late = {who for t, who in report["results"][-200:]}
    assert set(after) & late, f"the host's new executors took no call: {late}"
