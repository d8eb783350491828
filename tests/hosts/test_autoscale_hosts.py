"""The head's autoscaler across hosts: a host joined with `--max-executors 2` (and no executor of its own) gets
executors when a burst outgrows the head's `--autoscale 1:1`, they serve calls, and they depart after the calm
window without losing one. The head decides; the node only carries out. Windows are shortened with --policy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.hosts.cluster import TwoHosts, cli, python
from tests.hosts.netns import Lab

FAST = ("--policy", "autoscale_up_window_s=1", "--policy", "autoscale_down_window_s=3",
        "--policy", "autoscale_settle_s=1")

BURST = """
import collections, json, sys, time, cbctl
results, errors = [], []
with cbctl.connect() as c:
    c.register(lambda cb, x: (__import__("time").sleep(0.1), cb.getid())[1], name="slow_who")
    stop = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < stop:
        futures = [c.call_async("slow_who", i) for i in range(12)]
        for f in futures:
            try:
                results.append(f.result(timeout=60))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"ran": collections.Counter(results), "errors": errors}))
"""


@pytest.fixture
def hosts(lab3: Lab, tmp_path: Path) -> TwoHosts:
    return TwoHosts(lab3, tmp_path)


def node_executors(hosts: TwoHosts) -> list[str]:
    """The joined host's executors that the head lists as ready."""
    status = json.loads(cli(hosts.head, hosts.head_home, "status", "--json", check=True).stdout)
    return [p["name"] for p in status["processes"]
            if p["role"] == "executor" and p["host"] == hosts.node.address and p["state"] == "ready"]


def test_a_burst_grows_executors_on_a_joined_host_that_offers_capacity_and_calm_departs_them(hosts):
    hosts.up(1, "--autoscale", "1:1", *FAST)
    hosts.join(0, "--max-executors", "2")
    assert node_executors(hosts) == []  # it offers capacity and runs nothing until the head asks
    report = python(hosts.head, hosts.head_home, BURST, "10", timeout=120)
    assert report["errors"] == []
    node_ids = {f"{hosts.node.address}/executor-{i}" for i in range(2)}
    assert node_ids <= set(report["ran"]), report["ran"]  # both executors the head asked for served calls
    assert set(report["ran"]) <= node_ids | {"executor-0"}  # never past the head's 1 plus the host's 2
    head_log = (hosts.head_home / "logs" / "supervisor-0.log").read_text()
    assert f"autoscale: host {hosts.node.address} runs 2 CPU executor(s)" in head_log
    assert "autoscale up" in head_log and "work waits" in head_log
    deadline = time.monotonic() + 30
    while node_executors(hosts):  # calm: the head tells the host 0, and its executors depart
        assert time.monotonic() < deadline, "the joined host's executors did not depart after the calm window"
        time.sleep(0.5)
    node_log = (hosts.node_home / "logs" / "node-0.log").read_text()
    assert "the head's autoscaler asks for 2 CPU executor(s) here" in node_log
    assert "the head's autoscaler asks for 0 CPU executor(s) here" in node_log
    state = json.loads(cli(hosts.head, hosts.head_home, "status", "--json", check=True).stdout)["autoscale"]
    assert (state["max"], state["head_max"], state["hosts"]) == (3, 1, {hosts.node.address: 0})
    assert state["scale_downs"] >= 1
    ran = python(hosts.head, hosts.head_home, BURST, "1")  # the head's own executor still serves
    assert ran["errors"] == [] and set(ran["ran"]) == {"executor-0"}
