"""Executor departure and `cbctl scale` planning, as pure decisions (no processes)."""

from __future__ import annotations

import pytest

from cbctl.errors import InvalidArgument
from cbctl.runtime.executor.departure import Departure, Peer, choose_heir
from cbctl.runtime.supervisor.scaling import ScalePlan, plan_scale
from cbctl.runtime.wire.messages import ExecutorLeaving, LeavingAck, unpack
from tests.unit.clocks import Clock

EXECUTORS = [Peer("ipc://e0", 10, 0, "cpu"), Peer("ipc://e1", 11, 1, "cpu"), Peer("ipc://e2", 12, 2, "cpu"),
             Peer("ipc://g3", 13, 3, "gpu")]
SCHEDULERS = [Peer("ipc://s0")]


def test_the_heir_is_the_lowest_numbered_other_executor_of_the_same_type():
    assert choose_heir("ipc://e2", "cpu", EXECUTORS) == "ipc://e0"
    assert choose_heir("ipc://e0", "cpu", EXECUTORS) == "ipc://e1"
    assert choose_heir("ipc://g3", "gpu", EXECUTORS) == ""  # no other GPU executor: no heir


def test_leaving_waits_for_every_peer_and_scheduler_then_may_exit():
    clock = Clock(50.0)
    departure = Departure("executor-2", "ipc://e2", clock)
    told, frame = departure.begin(EXECUTORS, SCHEDULERS, "cpu", timeout_s=10)
    assert told == ["ipc://e0", "ipc://e1", "ipc://g3"]
    assert unpack(frame) == ExecutorLeaving("executor-2", "ipc://e2", "ipc://e0")
    assert not departure.may_exit()
    for sender in ("ipc://e0", "ipc://g3", "ipc://s0"):
        departure.on_ack(LeavingAck(sender))
    assert not departure.may_exit()  # executor-1 may still have triggers on their way here
    departure.on_ack(LeavingAck("ipc://e1"))
    assert departure.may_exit()


def test_a_peer_that_exited_or_the_deadline_releases_the_wait():
    clock = Clock(50.0)
    departure = Departure("executor-2", "ipc://e2", clock)
    departure.begin(EXECUTORS, SCHEDULERS, "cpu", timeout_s=10)
    departure.forget_exited(lambda pid: pid != 11)
    assert set(departure.awaiting) == {"ipc://e0", "ipc://g3", "ipc://s0"}  # schedulers have no pid: kept
    clock.now += 10
    assert departure.may_exit()


def test_peers_route_a_departed_executors_work_to_its_heir_and_acknowledge():
    departure = Departure("executor-0", "ipc://e0")
    assert departure.route("ipc://e2") == "ipc://e2"
    ack = departure.on_peer_leaving(ExecutorLeaving("executor-2", "ipc://e2", "ipc://e1"))
    assert unpack(ack) == LeavingAck("ipc://e0")
    assert departure.route("ipc://e2") == "ipc://e1"
    departure.on_peer_leaving(ExecutorLeaving("executor-1", "ipc://e1", "ipc://e0"))
    assert departure.route("ipc://e2") == "ipc://e0"  # its heir left too: follow to the heir's heir
    departure.on_peer_leaving(ExecutorLeaving("executor-3", "ipc://e3", ""))
    assert departure.route("ipc://e3") == "ipc://e3"  # no heir: nowhere better to send it
    assert departure.route("ipc://e9") == "ipc://e9"


def test_scale_plans_fresh_indices_up_and_the_highest_numbered_down():
    current = [(0, "executor-0"), (1, "executor-1"), (4, "executor-4")]
    assert plan_scale(current, 5, 5, 0) == ScalePlan([6, 7], [])
    assert plan_scale(current, 5, 1, 0) == ScalePlan([], ["executor-1", "executor-4"])
    assert plan_scale(current, 5, 3, 0) == ScalePlan([], [])
    assert plan_scale(current, 5, 0, 1) == ScalePlan([], ["executor-0", "executor-1", "executor-4"])
    with pytest.raises(InvalidArgument, match="at least one executor"):
        plan_scale(current, 5, 0, 0)
    for bad in (-1, "2", 1.5, True, None, 10**9, 2**63):  # a scale request is a frame: its size is bounded too
        with pytest.raises(InvalidArgument, match="whole number"):
            plan_scale(current, 5, bad, 0)
