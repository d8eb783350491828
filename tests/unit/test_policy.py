"""The placement policy as a pure object: statuses in, decisions out, with a fake clock and a seeded RNG."""

from __future__ import annotations

import random

import pytest

from cbctl.errors import InvalidArgument, NoExecutorAvailable
from cbctl.runtime.scheduler.policy import Policy, PolicySettings, host_of, parse_policy_options
from cbctl.runtime.wire.messages import ExecutorStatus
from tests.unit.clocks import Clock


def status(executor: int, pinned=(), utilization: float = 0.0, running: bool = True, executor_type: str = "cpu",
           cached=(), pid: int | None = None, host: str = "10.0.0.1") -> ExecutorStatus:
    return ExecutorStatus(f"executor-{executor}", f"tcp://{host}:{6000 + executor}", executor_type, running,
                          list(pinned), utilization, 0, list(cached), pid or 100 + executor, {})


def key(executor: int, host: str = "10.0.0.1") -> tuple[str, str]:
    return (host, f"executor-{executor}")


def make_policy(**settings) -> tuple[Policy, Clock]:
    clock = Clock()
    return Policy(PolicySettings(**settings), clock=clock, rng=random.Random(7)), clock


def feed(policy: Policy, *statuses: ExecutorStatus) -> None:
    for s in statuses:
        policy.process_status(s)


def test_a_status_is_recorded_and_a_hot_executor_backs_off():
    policy, clock = make_policy()
    feed(policy, status(0, pinned=["f"], utilization=0.5), status(1), status(2, utilization=0.71))
    assert set(policy.thread_statuses) == {key(0), key(1), key(2)}
    assert policy.function_locations == {"f": {key(0)}}
    assert policy.unpinned_cpu_executors == {key(1), key(2)}
    assert policy.unpinned_gpu_executors == set()
    assert policy.backoff == {key(2): clock.now}  # above 0.70 only
    assert policy.executors[key(0)].pinned == {"f"}


def test_a_leaving_executor_vanishes_from_every_structure():
    policy, clock = make_policy()
    feed(policy, status(0, pinned=["f"], utilization=0.9, cached=["k"]), status(1, pinned=["f"]))
    policy.pick_executor("f")
    policy.periodic_update()  # key_locations now holds executor-0
    assert key(0) in policy.key_locations["k"]
    feed(policy, status(0, running=False))
    assert key(0) not in policy.thread_statuses
    assert key(0) not in policy.executors
    assert policy.function_locations == {"f": {key(1)}}
    assert key(0) not in policy.backoff
    assert key(0) not in policy.running_counts
    assert all(key(0) not in holders for holders in policy.key_locations.values())
    assert key(0) not in policy.unpinned_cpu_executors
    assert all(policy.pick_executor("f").executor_id == "executor-1" for _ in range(20))


def test_a_restarted_executor_loses_its_old_pins_and_is_unpinned():
    policy, _ = make_policy()
    feed(policy, status(0, pinned=["f", "g"]), status(1, pinned=["f"]))
    feed(policy, status(0, pinned=[]))  # same pid, but it reports none of the pins it had
    assert policy.function_locations == {"f": {key(1)}}
    assert key(0) in policy.unpinned_cpu_executors
    feed(policy, status(1, pinned=["f"], pid=999))  # a new process: whatever the old one held is gone
    assert policy.executors[key(1)].pid == 999
    assert policy.function_locations == {"f": {key(1)}}  # the new process reports f again


def test_an_unpin_in_flight_is_not_mistaken_for_a_restart():
    policy, _ = make_policy()
    feed(policy, status(0, pinned=["g"]))
    policy.set_wanted({"g": False})
    [unpin] = policy.set_wanted({"f": False})  # g removed, f added
    assert (unpin.function, unpin.executor_id, unpin.pin) == ("g", "executor-0", False)
    [pin] = policy.ensure_pinned()
    assert (pin.function, pin.executor_id, pin.pin) == ("f", "executor-0", True)
    feed(policy, status(0, pinned=["g"]))  # sent before it handled the unpin: g is not a location again
    assert "g" not in policy.function_locations
    feed(policy, status(0, pinned=[]))  # reports none, but only because of our unpin: the pin stays pending
    assert policy.executors[key(0)].pinning == {"f"}
    policy.pin_result("executor-0", "f", True)
    assert policy.locations_of("f") == ["executor-0"]


def test_the_update_drops_old_backoff_and_call_times_and_rebuilds_key_locations():
    policy, clock = make_policy(backoff_window_s=5, call_window_s=5)
    feed(policy, status(0, utilization=0.9, cached=["a", "b"]), status(1, cached=["b"], host="10.0.0.2"))
    for _ in range(3):
        policy.pick_executor("f")
    assert sum(len(t) for t in policy.running_counts.values()) == 3
    policy.periodic_update()
    assert policy.key_locations == {"a": {key(0)}, "b": {key(0), key(1, "10.0.0.2")}}  # both hosts listed
    clock.advance(4)
    feed(policy, status(0, utilization=0.1, cached=["b"]), status(1, cached=["b", "c"], host="10.0.0.2"))
    policy.periodic_update()
    assert key(0) in policy.backoff  # 4 s old: still avoided
    assert sum(len(t) for t in policy.running_counts.values()) == 3
    assert policy.key_locations == {"b": {key(0), key(1, "10.0.0.2")}, "c": {key(1, "10.0.0.2")}}
    clock.advance(2)
    feed(policy, status(0), status(1, host="10.0.0.2"))
    policy.periodic_update()
    assert policy.backoff == {}
    assert sum(len(t) for t in policy.running_counts.values()) == 0
    assert policy.key_locations == {}


def test_locality_picks_the_executor_caching_the_most_referenced_keys():
    policy, _ = make_policy()
    feed(policy, status(0, cached=["x"]), status(1, cached=["x", "y"]), status(2), status(3, cached=["z"]))
    policy.periodic_update()
    assert {policy.pick_executor("lone", refs=["x", "y"]).executor_id for _ in range(30)} == {"executor-1"}
    assert {policy.pick_executor("lone", refs=["z"]).executor_id for _ in range(30)} == {"executor-3"}
    # without referenced keys, or with a key cached nowhere, calls spread over every executor
    assert len({policy.pick_executor("lone", refs=["nowhere"]).executor_id for _ in range(100)}) == 4
    off, _ = make_policy(locality=False)
    feed(off, status(0, cached=["x"]), status(1, cached=["x", "y"]), status(2), status(3))
    off.periodic_update()
    assert len({off.pick_executor("lone", refs=["x", "y"]).executor_id for _ in range(40)}) == 4


def test_locality_chooses_only_among_the_functions_locations():
    policy, _ = make_policy()
    feed(policy, status(0, pinned=["f"]), status(1, pinned=["f"], cached=["x"]), status(2, cached=["x", "y"]))
    policy.periodic_update()
    assert {policy.pick_executor("f", refs=["x", "y"]).executor_id for _ in range(20)} == {"executor-1"}


def test_backoff_is_honoured_unless_every_location_is_in_backoff():
    policy, clock = make_policy()
    feed(policy, status(0, pinned=["f"], utilization=0.95), status(1, pinned=["f"]), status(2, pinned=["f"]))
    assert {policy.pick_executor("f").executor_id for _ in range(40)} == {"executor-1", "executor-2"}
    feed(policy, status(1, pinned=["f"], utilization=0.8), status(2, pinned=["f"], utilization=0.99))
    assert len({policy.pick_executor("f").executor_id for _ in range(60)}) == 3  # all hot: use them all


def test_ties_go_to_the_executor_with_the_fewest_recent_calls():
    policy, _ = make_policy()
    feed(policy, status(0, pinned=["f"]), status(1, pinned=["f"]))
    picks = [policy.pick_executor("f").executor_id for _ in range(10)]
    assert picks.count("executor-0") == picks.count("executor-1") == 5


def test_parallel_branches_avoid_an_executor_already_in_the_call_when_they_can():
    policy, _ = make_policy()
    feed(policy, status(0), status(1))
    first = policy.pick_executor("a")
    for _ in range(10):
        assert policy.pick_executor("b", avoid=[first.address]).address != first.address


def test_gpu_functions_land_only_on_gpu_executors():
    policy, _ = make_policy()
    feed(policy, status(0), status(1), status(2, executor_type="gpu"))
    assert {policy.pick_executor("model", gpu=True).executor_id for _ in range(20)} == {"executor-2"}
    assert "executor-2" not in {policy.pick_executor("cpu_fn").executor_id for _ in range(40)}
    policy.set_wanted({"model": True, "prep": False})
    actions = policy.ensure_pinned()
    assert {(a.function, a.executor_id) for a in actions if a.function == "model"} == {("model", "executor-2")}
    assert [a.executor_id for a in actions if a.function == "prep"] != ["executor-2"]


def test_no_executor_of_the_needed_type_is_a_clear_error():
    policy, _ = make_policy()
    feed(policy, status(0))
    with pytest.raises(NoExecutorAvailable, match="no live GPU executor can run 'model'.*--gpu-executors"):
        policy.pick_executor("model", gpu=True)
    empty, _ = make_policy()
    with pytest.raises(NoExecutorAvailable, match="no live CPU executor"):
        empty.pick_executor("f")


def test_placing_a_dag_pins_each_function_on_an_unpinned_executor_and_a_refusal_tries_another():
    policy, _ = make_policy()
    feed(policy, status(0), status(1), status(2, pinned=["other"]))
    policy.set_wanted({"f": False, "g": False})
    actions = policy.ensure_pinned()
    assert [(a.function, a.executor_id, a.pin) for a in actions] == [("f", "executor-0", True),
                                                                     ("g", "executor-1", True)]
    assert policy.ensure_pinned() == []  # under way: not asked twice
    assert policy.pin_result("executor-0", "f", True) == []
    assert policy.function_locations["f"] == {key(0)}
    retry = policy.pin_result("executor-1", "g", False)  # refused: try another, not executor-1 again
    assert [(a.function, a.pin) for a in retry] == [("g", True)] and retry[0].executor_id != "executor-1"
    policy.pin_result(retry[0].executor_id, "g", True)
    assert policy.locations_of("g") == [retry[0].executor_id]
    assert policy.unpinned_cpu_executors == {key(1)}


def test_an_unanswered_pin_times_out_and_goes_elsewhere():
    policy, clock = make_policy(pin_timeout_s=5, start_grace_s=0)
    feed(policy, status(0), status(1))
    policy.set_wanted({"f": False})
    [first] = policy.ensure_pinned()
    clock.advance(6)
    feed(policy, status(0), status(1))
    actions = policy.periodic_update()
    assert [(a.function, a.pin) for a in actions] == [("f", True)]
    assert actions[0].executor_id != first.executor_id


def test_removed_functions_are_unpinned():
    policy, _ = make_policy()
    feed(policy, status(0, pinned=["f", "g"]), status(1, pinned=["f"]))
    policy.set_wanted({"f": False, "g": False})
    actions = policy.set_wanted({"g": False})
    assert sorted((a.function, a.executor_id, a.pin) for a in actions) == [("f", "executor-0", False),
                                                                          ("f", "executor-1", False)]
    assert "f" not in policy.function_locations


def test_saturated_locations_scale_out_onto_an_unpinned_executor_then_back_in_when_calm():
    policy, clock = make_policy(scale_in_calm_s=3, backoff_window_s=2, start_grace_s=0)
    feed(policy, status(0, pinned=["f"], utilization=0.95), status(1), status(2))
    policy.set_wanted({"f": False})
    assert policy.pick_executor("f").executor_id == "executor-0"  # its only location, hot as it is
    [action] = policy.periodic_update()
    assert (action.function, action.pin) == ("f", True) and action.executor_id in ("executor-1", "executor-2")
    assert policy.periodic_update() == []  # nothing is overloaded until a call sees it so again
    policy.pin_result(action.executor_id, "f", True)
    extra = int(action.executor_id[-1])
    # while load lasts, the new location takes the calls (the old one is in backoff) and nothing is unpinned
    for _ in range(3):
        clock.advance(1)
        feed(policy, status(0, pinned=["f"], utilization=0.9), status(extra, pinned=["f"], utilization=0.5))
        assert policy.pick_executor("f").executor_id == action.executor_id
        assert [a for a in policy.periodic_update() if not a.pin] == []
    # load stops: once every location has been calm for 3 s, the newest pin goes, and never the last
    unpins = []
    for _ in range(6):
        clock.advance(1)
        feed(policy, status(0, pinned=["f"]), status(extra, pinned=[] if unpins else ["f"]))
        unpins += [(a.function, a.executor_id) for a in policy.periodic_update() if not a.pin]
    assert unpins == [("f", action.executor_id)]
    assert policy.locations_of("f") == ["executor-0"]
    assert policy.unpinned_cpu_executors == {key(1), key(2)}


def test_no_scale_out_without_an_unpinned_executor():
    policy, _ = make_policy(start_grace_s=0)
    feed(policy, status(0, pinned=["f"], utilization=0.95), status(1, pinned=["g"]))
    policy.set_wanted({"f": False, "g": False})
    policy.pick_executor("f")
    assert policy.periodic_update() == []


def test_a_stale_or_silent_executor_is_avoided_and_finally_forgotten():
    policy, clock = make_policy(stale_s=2.5, silence_s=5)
    feed(policy, status(0, pinned=["f"]), status(1))
    clock.advance(3)
    feed(policy, status(1))
    policy.periodic_update()
    assert policy.pick_executor("f").executor_id == "executor-1"  # its location is stuck in a long call
    clock.advance(20)
    feed(policy, status(1))
    policy.periodic_update()
    assert key(0) not in policy.executors and "f" not in policy.function_locations


def test_host_comes_from_the_address():
    assert host_of("tcp://10.1.2.3:5555", "me") == "10.1.2.3"
    assert host_of("ipc:///tmp/x/sock/executor-0", "me") == "me"


def test_settings_from_the_command_line_are_validated():
    assert parse_policy_options(["backoff_window_s=2", "locality=off"]) == {"backoff_window_s": 2.0,
                                                                             "locality": False}
    with pytest.raises(InvalidArgument, match="unknown policy setting 'bogus'"):
        parse_policy_options(["bogus=1"])
    with pytest.raises(InvalidArgument, match="must be a number"):
        parse_policy_options(["backoff_window_s=soon"])
    with pytest.raises(InvalidArgument, match="KEY=VALUE"):
        parse_policy_options(["locality"])
    with pytest.raises(InvalidArgument, match="true or false"):
        parse_policy_options(["locality=maybe"])


def test_describe_is_plain_data():
    import json

    policy, _ = make_policy()
    feed(policy, status(0, pinned=["f"], utilization=0.8), status(1, executor_type="gpu"))
    described = json.loads(json.dumps(policy.describe()))
    assert described["function_locations"] == {"f": ["executor-0"]}
    assert described["backoff"] == {"executor-0": 0.0}
    assert described["unpinned"] == {"cpu": [], "gpu": ["executor-1"]}


def test_picking_reuses_candidates():
    """The hot path reuses candidates computed once per change of state (statuses, updates), so a call costs
    a dict lookup and a deque append for a function pinned once, and a short loop over several candidates.
    What that costs in time is measured by ``python -m benchmarks.policy_pick``, not asserted here."""
    policy, _ = make_policy()
    feed(policy, *[status(i, pinned=["one"] if i == 0 else ["many"], cached=[f"k{i}"]) for i in range(9)])
    policy.periodic_update()
    policy.pick_executor("one")
    policy.pick_executor("many", refs=["k1", "k5"])
    single, cached = policy._candidates[False]["one"], policy._candidates[False]["many"]
    for _ in range(1000):
        policy.pick_executor("one")
        policy.pick_executor("many", refs=["k1", "k5"])
    assert policy._candidates[False]["one"] is single  # not rebuilt per call
    assert policy._candidates[False]["many"] is cached
    assert len(cached) == 8
    feed(policy, status(9, pinned=["many"]))
    policy.periodic_update()
    policy.pick_executor("many")
    assert policy._candidates[False]["many"] is not cached, "a change of state must rebuild the candidates"


def test_the_pick_benchmark_runs():
    from benchmarks.policy_pick import measure

    found = measure(calls=50)
    assert set(found) == {"single_us", "several_us", "floor_us"} and all(v > 0 for v in found.values())
