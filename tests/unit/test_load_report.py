"""What a scheduler reports for the autoscaler (scheduler/load_report.py), and how the supervisor's side reads
several schedulers' reports (supervisor/autoscaling.py): plain data, no processes."""

from __future__ import annotations

from types import SimpleNamespace

from cbctl.runtime.process import ProcessConfig
from cbctl.runtime.scheduler.load_report import executor_figures
from cbctl.runtime.supervisor.autoscaler import AutoscaleSettings
from cbctl.runtime.supervisor.autoscaling import AutoscaleControl
from cbctl.runtime.supervisor.child import Child
from cbctl.runtime.supervisor.nodes import NodeTable
from cbctl.runtime.wire.messages import ExecutorStatus, LoadReport, NodeHeartbeat


def status(executor_id: str, utilization: float, queue: int, running: bool = True, kind: str = "cpu"):
    return ExecutorStatus(executor_id, f"ipc:///tmp/x/{executor_id}", kind, running, [], utilization, queue, [],
                          100, {})


def test_a_report_lists_running_cpu_executors_and_counts_a_silent_one_as_busy():
    statuses = {"executor-0": (status("executor-0", 0.25, 3), 99.5),
                "executor-1": (status("executor-1", 0.1, 0), 90.0),  # silent for 10 s: in a long call
                "executor-2": (status("executor-2", 0.9, 1, running=False), 99.9),  # leaving
                "executor-3": (status("executor-3", 0.9, 0, kind="gpu"), 99.9)}
    assert executor_figures(statuses, now=100.0) == {"executor-0": [0.25, 3.0], "executor-1": [1.0, 0.0]}
    # placement by outstanding work counts steps placed since the status: the fresher, larger figure wins
    assert executor_figures(statuses, now=100.0, outstanding={"executor-0": 2, "executor-1": 6}) == {
        "executor-0": [0.25, 3.0], "executor-1": [1.0, 5.0]}


class Pool:
    """What AutoscaleControl sees of a supervisor: children and a way to start one (no process here)."""

    def __init__(self, names: list[str]) -> None:
        self.children = {}
        for name in names:
            self.add(int(name.rsplit("-", 1)[1]))
        self.highest_executor_index = -1
        self.spec = SimpleNamespace(executors=len(names))
        self.files_written = 0

    def add(self, index: int) -> Child:
        child = Child(ProcessConfig("/tmp/x", "executor", index, "", options={"executor_type": "cpu"}))
        child.state = "ready"
        self.children[child.config.name] = child
        return child

    def start_executor(self, index: int, executor_type: str) -> Child:
        return self.add(index)

    def write_cluster_file(self) -> None:
        self.files_written += 1


def test_figures_take_each_executor_from_the_freshest_report_and_add_every_schedulers_parked_calls():
    now = [100.0]
    pool = Pool(["executor-0", "executor-1"])
    control = AutoscaleControl(pool, 0, 4, AutoscaleSettings(), clock=lambda: now[0])
    control.on_report(LoadReport("scheduler-0", {"executor-0": [0.5, 2.0], "executor-1": [0.2, 0.0],
                                                 "executor-9": [1.0, 5.0]}, 1))  # executor-9 is not in the pool
    now[0] = 100.5
    control.on_report(LoadReport("scheduler-1", {"executor-0": [0.75, 1.0]}, 2))
    figures = control.figures()
    assert (figures.busy, figures.queued, figures.parked) == (0.95, 1, 3)
    now[0] = 110.0  # both reports stale: nothing to decide from
    assert control.figures() is None


def test_a_lower_target_departs_the_idlest_executors_and_a_higher_one_starts_fresh_indices():
    now = [100.0]
    pool = Pool(["executor-0", "executor-1", "executor-2"])
    control = AutoscaleControl(pool, 0, 4, AutoscaleSettings(), clock=lambda: now[0])
    control.on_report(LoadReport("scheduler-0", {"executor-0": [0.0, 0.0], "executor-1": [0.9, 1.0],
                                                 "executor-2": [0.0, 0.0]}, 0))
    control.apply(1)
    assert sorted(n for n, c in pool.children.items() if c.state == "stopping") == ["executor-0", "executor-2"]
    control.apply(3)  # the departing ones keep their indices: newcomers never reuse one
    assert sorted(n for n, c in pool.children.items() if c.state == "ready") == [
        "executor-1", "executor-3", "executor-4"]
    assert (control.started, control.departed) == (2, 2)


def beat(host: str, cpu: int, max_executors: int, node_pid: int = 500):
    """A joined host's heartbeat listing ``cpu`` ready CPU executors and offering ``max_executors``."""
    executors = [[i, 1000 + i, f"tcp://10.0.0.2:{7000 + i}", "cpu", "ready", 1.0, 0] for i in range(cpu)]
    return NodeHeartbeat(host, node_pid, 1, executors, False, max_executors)


def test_joined_hosts_that_offer_capacity_count_in_the_figures_and_receive_their_share():
    now = [100.0]
    nodes = NodeTable(lost_after_s=2.0, head_host="head")
    nodes.on_heartbeat(beat("b", 1, 2), now[0])  # offers 2, runs 1
    nodes.on_heartbeat(beat("fixed", 2, 0, node_pid=501), now[0])  # joined without --max-executors
    pool = Pool(["executor-0"])
    control = AutoscaleControl(pool, 1, 1, AutoscaleSettings(), clock=lambda: now[0], nodes=nodes, home="head")
    assert control.autoscaler.maximum == 3  # the head's MAX 1 plus b's 2; the fixed host offers nothing
    control.on_report(LoadReport("scheduler-0", {"executor-0": [0.5, 0.0], "b/executor-0": [1.0, 2.0],
                                                 "fixed/executor-0": [1.0, 9.0]}, 0))
    figures = control.figures()
    assert (figures.busy, figures.queued) == (1.5, 2)  # the fixed host's executors are out of the pool
    control.carry_out(3)
    assert control.share_of("b") == 2 and control.share_of("fixed") == -1
    assert len(control.active()) == 1  # the head was full already: the addition went to b
    control.carry_out(1)  # calm: the joined host's executors go first, the head keeps its own
    assert control.share_of("b") == 0 and len(control.active()) == 1
    control.disable(1)
    assert control.share_of("b") == -1  # autoscaling off: hosts keep what they run


def test_a_lost_host_takes_its_capacity_and_share_with_it():
    now = [100.0]
    nodes = NodeTable(lost_after_s=2.0, head_host="head")
    nodes.on_heartbeat(beat("b", 2, 2), now[0])
    pool = Pool(["executor-0"])
    control = AutoscaleControl(pool, 0, 1, AutoscaleSettings(), clock=lambda: now[0], nodes=nodes, home="head")
    control.autoscaler.target = 3
    control.carry_out(3)
    assert control.share_of("b") == 2
    now[0] = 103.0
    nodes.expire(now[0])
    control.step()  # no report: nothing observed, but the range shrinks to the head's own and the target with it
    assert (control.autoscaler.maximum, control.autoscaler.target) == (1, 1)
    assert control.share_of("b") == -1 and len(control.active()) == 1


def test_turning_autoscaling_on_counts_what_joined_hosts_run_already():
    nodes = NodeTable(lost_after_s=2.0, head_host="head")
    nodes.on_heartbeat(beat("b", 2, 2), 100.0)
    control = AutoscaleControl(Pool(["executor-0"]), 1, 1, AutoscaleSettings(), clock=lambda: 100.0, nodes=nodes,
                               home="head")
    assert (control.autoscaler.target, control.autoscaler.maximum) == (3, 3)  # nothing departs at once
