"""The head's table of joined hosts: joins, heartbeats, loss after the bound, leaving, starting afresh."""

from __future__ import annotations

from cbctl.runtime.supervisor.nodes import NodeTable
from cbctl.runtime.wire.messages import NodeHeartbeat


def beat(pids: list[int], node_pid: int = 50, host: str = "10.0.0.2", leaving: bool = False) -> NodeHeartbeat:
    executors = [[i, pid, f"tcp://{host}:{6000 + i}", "cpu", "ready", 1.0, 0] for i, pid in enumerate(pids)]
    return NodeHeartbeat(host, node_pid, 1, executors, leaving)


def test_a_host_joins_stays_while_it_heartbeats_and_is_lost_after_the_bound() -> None:
    table = NodeTable(lost_after_s=4.0, head_host="10.0.0.1")
    verdict = table.on_heartbeat(beat([11, 12]), now=0.0)
    assert verdict.accepted and verdict.changed and not verdict.lost
    assert [(e.host, e.index, e.pid) for e in table.process_entries()] == [("10.0.0.2", 0, 11), ("10.0.0.2", 1, 12)]
    assert not table.on_heartbeat(beat([11, 12]), now=3.9).changed
    assert table.expire(now=7.8) == []  # 3.9 s since the last heartbeat
    [(host, lost)] = table.expire(now=8.0)
    assert host == "10.0.0.2"
    assert sorted((m.executor_id, m.pid) for m in lost) == [("10.0.0.2/executor-0", 11), ("10.0.0.2/executor-1", 12)]
    assert table.process_entries() == []


def test_a_lost_host_is_told_so_until_it_starts_afresh() -> None:
    table = NodeTable(4.0, "10.0.0.1")
    table.on_heartbeat(beat([11]), 0.0)
    table.expire(10.0)
    late = table.on_heartbeat(beat([11]), 11.0)  # its link came back: same processes, declared dead
    assert not late.accepted and late.reason.startswith("lost")
    fresh = table.on_heartbeat(beat([21]), 12.0)
    assert fresh.accepted and [e.pid for e in table.process_entries()] == [21]


def test_leaving_removes_without_loss_and_duplicates_are_refused() -> None:
    table = NodeTable(4.0, "10.0.0.1")
    table.on_heartbeat(beat([11]), 0.0)
    other = table.on_heartbeat(beat([31], node_pid=99), 1.0)
    assert not other.accepted and "joined already" in other.reason
    assert not table.on_heartbeat(beat([], host="10.0.0.1"), 1.0).accepted  # the head's own name
    gone = table.on_heartbeat(beat([], leaving=True), 2.0)
    assert gone.accepted and gone.changed and not gone.lost and table.nodes == {}


def test_an_executor_restarted_on_its_host_is_reported_lost() -> None:
    table = NodeTable(4.0, "10.0.0.1")
    table.on_heartbeat(beat([11, 12]), 0.0)
    verdict = table.on_heartbeat(beat([11, 13]), 1.0)
    assert [(m.executor_id, m.pid) for m in verdict.lost] == [("10.0.0.2/executor-1", 12)]


def test_a_cluster_file_names_pids_of_its_own_machine_only() -> None:
    from cbctl.runtime.cluster import ClusterFile, ProcessEntry, pid_space

    entries = [ProcessEntry("executor", 0, 101, "tcp://10.0.0.1:1", 0.0),
               ProcessEntry("executor", 0, 102, "tcp://10.0.0.2:1", 0.0, host="10.0.0.2")]
    here = ClusterFile("/h", 100, 0.0, "tcp://10.0.0.1:2", "tcp://10.0.0.1:3", ["tcp://10.0.0.1:4"], 0.0, "0",
                       entries, pid_space=pid_space())
    assert here.is_local() and here.pids() == [100, 101]  # never the joined host's executor
    copied = ClusterFile(**{**here.__dict__, "pid_space": "another-boot/pid:[1]"})
    assert not copied.is_local() and copied.pids() == []
