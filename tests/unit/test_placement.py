"""Placement by outstanding work (placement.py), the executors' load reports and stealing rules (stealing.py),
and the step-record analysis (step_records.py): pure logic, with a fake clock and a seeded RNG."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from cbctl.errors import InvalidArgument
from cbctl.runtime import multiexec
from cbctl.runtime.executor.stealing import LoadEdges, stealable
from cbctl.runtime.retries import InFlightCall
from cbctl.runtime.scheduler.placement import OutstandingPolicy, new_policy
from cbctl.runtime.scheduler.policy import Policy, PolicySettings, parse_policy_options
from cbctl.runtime.step_records import waited_while_idle
from cbctl.runtime.wire.messages import DagTrigger, ExecutorLoad, ExecutorStatus
from tests.unit.clocks import Clock


def address(executor: int) -> str:
    return f"tcp://10.0.0.1:{6000 + executor}"


def status(executor: int, pinned=(), queue: int = 0, cached=(), executor_type: str = "cpu",
           utilization: float = 0.0) -> ExecutorStatus:
    return ExecutorStatus(f"executor-{executor}", address(executor), executor_type, True, list(pinned),
                          utilization, queue, list(cached), 100 + executor, {})


def load(executor: int, steps: int, movable: bool = True, denied_by: str = "", last_call: str = "") -> ExecutorLoad:
    return ExecutorLoad(f"executor-{executor}", address(executor), 100 + executor, steps, movable and steps > 1,
                        last_call, denied_by)


def make(n: int = 4, seed: int = 7, **settings) -> tuple[OutstandingPolicy, Clock]:
    clock = Clock()
    policy = new_policy(PolicySettings(**settings), clock=clock, rng=random.Random(seed))
    assert isinstance(policy, OutstandingPolicy)
    for i in range(n):
        policy.process_status(status(i))
    return policy, clock


def test_the_setting_picks_the_policy_and_cloudburst_stays_available():
    assert type(new_policy(PolicySettings())) is OutstandingPolicy  # the default
    assert type(new_policy(PolicySettings(placement="cloudburst"))) is Policy
    assert parse_policy_options(["placement=Cloudburst"]) == {"placement": "cloudburst"}
    with pytest.raises(InvalidArgument, match="placement must be one of outstanding, cloudburst"):
        parse_policy_options(["placement=fastest"])


def test_a_burst_lands_on_distinct_executors():
    """The issue's failure: N concurrent calls on N executors, each on its own, whatever ran before."""
    policy, _ = make(10)
    for _ in range(30):  # an earlier burst, finished and reported idle
        policy.pick_executor("warmup")
    for i in range(10):
        policy.process_load(load(i, 0))
    chosen = [policy.pick_executor("rendezvous").executor_id for _ in range(10)]
    assert len(set(chosen)) == 10


def test_an_idle_executor_beats_a_busy_one_even_with_fewer_recent_calls():
    policy, _ = make(2)
    for _ in range(5):
        policy.pick_executor("f")
    policy.process_load(load(0, 0))  # executor-0 finished everything; executor-1 still holds its calls
    policy.process_load(load(1, 2))
    assert policy.pick_executor("f").executor_id == "executor-0"


def test_among_busy_executors_the_fewest_outstanding_wins_and_ties_are_random():
    policy, _ = make(3, work_stealing=False)
    for i, steps in enumerate((3, 1, 2)):
        policy.process_load(load(i, steps))
    assert policy.pick_executor("f").executor_id == "executor-1"
    counts = Counter()
    for seed in range(40):
        policy, _ = make(3, seed=seed, work_stealing=False)
        for i in range(3):
            policy.process_load(load(i, 2))
        counts[policy.pick_executor("f").executor_id] += 1
    assert set(counts) == {"executor-0", "executor-1", "executor-2"}


def test_locality_wins_among_idle_executors_but_not_over_idleness():
    policy, _ = make(3)
    policy.process_status(status(1, cached=["k"]))
    policy.process_status(status(2, cached=["k"]))
    policy.periodic_update()  # key locations come from the statuses' cached keys
    assert policy.pick_executor("f", refs=["k"]).executor_id in ("executor-1", "executor-2")
    policy.process_load(load(1, 1))
    policy.process_load(load(2, 1))
    assert policy.pick_executor("f", refs=["k"]).executor_id == "executor-0"  # idle beats cached


def finished(call_id: str, executor: int, dispatched_at: float) -> InFlightCall:
    return InFlightCall(SimpleNamespace(call_id=call_id), {"f": address(executor)}, 0, 1, dispatched_at)


def test_finished_calls_reported_by_the_client_make_an_executor_idle_again():
    policy, clock = make(1)
    clock.advance(1)
    chosen = policy.pick_executor("f", now=clock.now, call_id="c1")
    assert chosen.outstanding == 1
    policy.calls_finished([finished("c1", 0, clock.now)])
    assert chosen.outstanding == 0
    # a call placed well before the executor's latest report is in that report: not subtracted again
    policy.pick_executor("f", now=clock.now, call_id="c2")
    clock.advance(1)
    policy.process_load(load(0, 1))
    policy.calls_finished([finished("c2", 0, clock.now - 1)])
    assert chosen.outstanding == 1


def test_a_report_that_crossed_a_placement_does_not_make_the_executor_look_idle():
    policy, clock = make(1)
    view = policy.executors[("10.0.0.1", "executor-0")]
    policy.pick_executor("f", now=clock.now, call_id="c1")
    clock.advance(0.001)
    policy.pick_executor("f", now=clock.now, call_id="c2")  # on its way when the executor reported idle
    clock.advance(0.001)
    policy.process_load(load(0, 0, last_call="c1"))  # had received (and run) c1, not c2
    assert view.outstanding == 1
    policy.calls_finished([finished("c2", 0, clock.now - 0.001)])
    assert view.outstanding == 0
    # a report naming no call of this scheduler's counts every recent placement not known finished
    policy.pick_executor("f", now=clock.now, call_id="c3")
    policy.process_load(load(0, 0, last_call="another-schedulers-call"))
    assert view.outstanding == 1
    clock.advance(1)  # long enough for any step to arrive: the executor's count is the truth
    policy.process_load(load(0, 0))
    assert view.outstanding == 0


def test_a_busy_report_is_undone_by_its_calls_end_even_if_the_idle_report_is_folded():
    policy, clock = make(1)
    view = policy.executors[("10.0.0.1", "executor-0")]
    policy.pick_executor("f", now=clock.now, call_id="c1")
    clock.advance(0.001)
    policy.process_load(load(0, 1, last_call="c1"))  # busy: about to run c1; its idle report is folded
    assert view.outstanding == 1
    clock.advance(0.001)
    policy.calls_finished([finished("c1", 0, clock.now - 0.002)])  # the client's next call says c1 is done
    assert view.outstanding == 0
    policy.calls_finished([finished("c1", 0, clock.now - 0.002)])  # (said twice: still not negative)
    assert view.outstanding == 0


def test_a_busy_pinned_function_is_pinned_at_once_on_an_idle_unpinned_executor():
    policy, _ = make(3)
    policy.process_status(status(0, pinned=["f"]))
    policy.process_status(status(1, pinned=["g"]))
    assert policy.pick_executor("f").executor_id == "executor-0"
    assert policy.take_actions() == []
    chosen = policy.pick_executor("f")  # executor-0 busy, executor-2 idle with nothing pinned
    assert chosen.executor_id == "executor-2"
    (action,) = policy.take_actions()
    assert (action.function, action.executor_id, action.pin) == ("f", "executor-2", True)
    assert policy.pick_executor("f").executor_id == "executor-0"  # both busy now, none left to pin: fewest
    assert policy.take_actions() == []
    policy.pin_result("executor-2", "f", True)
    assert policy.locations_of("f") == ["executor-0", "executor-2"]


def test_parallel_branches_still_avoid_executors_of_their_call():
    policy, _ = make(2)
    first = policy.pick_executor("left")
    assert policy.pick_executor("right", avoid=[first.address]) is not first


def test_a_backlogged_executor_gets_idle_thieves():
    policy, _ = make(6)
    policy.process_load(load(1, 1))
    hints = policy.process_load(load(0, 2))  # runs one, one that could run elsewhere waits behind it
    assert {victim for _, victim in hints} == {address(0)}
    # one per waiting step and two spares (a thief may be busy already), idle ones only, in a fixed order so
    # that two schedulers hint the same ones
    assert [thief.executor_id for thief, _ in hints] == ["executor-2", "executor-3", "executor-4"]
    assert all(thief.outstanding == 0 for thief, _ in hints)  # not counted busy before they say so
    assert policy.process_load(load(0, 3, movable=False)) == []  # what waits must run there: no thief
    stealing_off, _ = make(4, work_stealing=False)
    assert stealing_off.process_load(load(0, 3)) == []


def test_an_executor_turning_idle_is_sent_to_a_backlogged_one_until_that_has_nothing_to_give():
    policy, clock = make(3)
    policy.process_load(load(1, 1))
    policy.process_load(load(2, 1))
    policy.process_load(load(0, 3))  # nobody idle to hint yet
    (hint,) = policy.process_load(load(1, 0))
    assert (hint[0].executor_id, hint[1]) == ("executor-1", address(0))
    # it asked, executor-0 had nothing that could move after all: no more hints there until it reports again
    assert policy.process_load(load(1, 0, denied_by=address(0))) == []
    assert policy.rehint() == []
    policy.process_load(load(0, 2))
    clock.advance(1)
    assert [(t.executor_id, v) for t, v in policy.rehint()] == [("executor-1", address(0))]


def test_an_old_processes_load_report_is_ignored():
    policy, _ = make(1)
    policy.process_load(ExecutorLoad("executor-0", address(0), 999, 5, True, ""))
    assert policy.executors[("10.0.0.1", "executor-0")].outstanding == 0


def test_load_reports_go_on_state_changes_only_and_are_rate_limited():
    clock = Clock()
    edges = LoadEdges(0.01, burst=2, clock=clock)
    assert edges.observe(1, False)  # idle -> busy
    assert not edges.observe(1, False)
    assert not edges.observe(3, False)  # more steps, none of which could move: still just busy
    assert edges.observe(3, True)  # busy -> backlogged: the burst is spent
    assert not edges.observe(2, True)  # still backlogged
    clock.advance(0.001)
    assert not edges.observe(0, False)  # idle, but no token left: folded
    assert edges.pending and edges.wait_ms(100) == 11
    assert not edges.observe(3, True)  # back to what was sent: nothing due
    assert not edges.pending and edges.wait_ms(100) == 100
    assert not edges.observe(0, False)
    clock.advance(0.01)
    assert edges.observe(0, False)  # the folded change, once a token came
    assert edges.observe(1, False, force=True)  # forced (a thief correcting its schedulers) goes regardless
    edges.not_backlogged()
    assert edges.sent == 4
    clock.advance(1)
    # idle again after calls the schedulers have not heard of (its busy report folded): news, once
    assert edges.observe(0, False, last_call="c7")
    assert not edges.observe(0, False, last_call="c7")
    assert edges.observe(1, False, last_call="c8")  # busy with another call: the burst's second token
    assert not edges.observe(0, False, last_call="c8")  # idle after it: no token, folded ...
    clock.advance(0.011)
    assert edges.observe(0, False, last_call="c8")  # ... and sent with the next one


def trigger(consistency: str = "lww", extras=None, edges=()) -> DagTrigger:
    return DagTrigger("c1", "", "f", {"f": "a"}, {"f": 1}, list(edges), "", b"", "r", False, consistency,
                      extras or {})


def test_only_steps_that_can_run_anywhere_are_handed_over():
    plain = trigger()
    assert stealable(plain, [plain], batching=False)
    assert not stealable(plain, [plain, plain], batching=False)  # a join's inputs met here
    assert not stealable(plain, [plain], batching=True)
    causal = trigger("causal")
    assert not stealable(causal, [causal], batching=False)
    gathered = trigger(extras={multiexec.EXTRAS_KEY: {}})
    assert not stealable(gathered, [gathered], batching=False)
    # the first trigger of a join, waiting (deferred) before its other input came: the schedule sends that one
    # here, so moving this one alone would split the join and strand the call (hd_inbox hung on it)
    first_of_join = trigger(edges=[["a", "f"], ["b", "f"]])
    assert not stealable(first_of_join, [first_of_join], batching=False)
    after_one = trigger(edges=[["a", "f"], ["f", "g"]])
    assert stealable(after_one, [after_one], batching=False)


def row(executor: str, call: str, dispatched, started: float, finished: float, source: str = "") -> dict:
    return {"executor": executor, "call_id": call, "function": "f", "source": source, "dispatched": dispatched,
            "started": started, "finished": finished}


def test_waits_behind_a_step_while_another_executor_sat_idle_are_found():
    rows = [row("e0", "sleep", 0.0, 0.0, 0.05), row("e0", "noop", 0.01, 0.05, 0.051),
            row("e1", "other", 0.0, 0.0, 0.005)]
    (found,) = waited_while_idle(rows, ["e0", "e1", "e2"])
    assert found["call_id"] == "noop" and found["idle"] == ["e1", "e2"]
    # every other executor busy for the whole wait: waiting was the best there was
    busy = rows[:2] + [row("e1", "x", 0.0, 0.0, 0.06)]
    assert waited_while_idle(busy, ["e0", "e1"]) == []
    # a short wait (transport) does not count
    assert waited_while_idle([row("e0", "a", 0.0, 0.0, 0.001), row("e0", "b", 0.0, 0.001, 0.002)], ["e0", "e1"]) == []


# --- a chain's next step goes where its input is made ----------------------------------------------------


def test_a_chains_next_step_runs_where_its_input_is_made_when_that_executor_is_free():
    """``sq`` is pinned on executor-1 only; ``inc`` ran on executor-0. The next step goes to executor-0, pinned
    there or not: ``inc`` is all executor-0 holds, and it ends before ``sq`` starts."""
    policy, _ = make(2)
    policy.process_status(status(0, pinned=["inc"]))
    policy.process_status(status(1, pinned=["sq"]))
    for _ in range(20):
        first = policy.pick_executor("inc", call_id="c")
        second = policy.pick_executor("sq", after=first.address, call_id="c")
        assert (first.executor_id, second.executor_id) == ("executor-0", "executor-0")
        policy.calls_finished([SimpleNamespace(dispatched_at=0.0, locations={"inc": first.address, "sq": first.address},
                                               request=SimpleNamespace(call_id="c"))])
        assert policy.by_address[first.address].outstanding == 0  # both steps counted, both finished


def test_a_chains_next_step_goes_elsewhere_when_its_inputs_executor_holds_other_work():
    """Never behind a busy executor while another idles: executor-0 holds another call's step too."""
    policy, _ = make(2)
    policy.process_status(status(0, pinned=["inc"]))
    policy.process_status(status(1, pinned=["sq"]))
    policy.pick_executor("inc", call_id="other")
    first = policy.pick_executor("inc", call_id="c")
    assert policy.pick_executor("sq", after=first.address, call_id="c").executor_id == "executor-1"


def test_a_chains_next_step_keeps_its_executor_type():
    """A GPU step after a CPU one goes to a GPU executor, however free the CPU one is."""
    policy, _ = make(1)
    policy.process_status(status(1, executor_type="gpu"))
    first = policy.pick_executor("prepare", call_id="c")
    assert first.executor_id == "executor-0"
    assert policy.pick_executor("model", gpu=True, after=first.address, call_id="c").executor_id == "executor-1"


def test_cloudburst_placement_ignores_where_the_input_is_made():
    policy = new_policy(PolicySettings(placement="cloudburst"), clock=Clock(), rng=random.Random(3))
    policy.process_status(status(0, pinned=["inc"]))
    policy.process_status(status(1, pinned=["sq"]))
    first = policy.pick_executor("inc")
    assert {policy.pick_executor("sq", after=first.address).executor_id for _ in range(10)} == {"executor-1"}


def test_a_busy_report_that_arrives_after_its_call_finished_leaves_the_executor_idle():
    """Under load the executor's report 'busy with c' can reach the scheduler after c's caller said c is done:
    it counted a step that is gone, so a call that prefers this executor (its cache) must still find it idle."""
    policy, clock = make(2)
    first = policy.pick_executor("f", call_id="c", now=clock())
    policy.calls_finished([SimpleNamespace(dispatched_at=clock(), locations={"f": first.address},
                                           request=SimpleNamespace(call_id="c"))])
    assert first.outstanding == 0
    clock.advance(0.001)
    policy.process_load(load(int(first.executor_id.split("-")[1]), 1, last_call="c"))  # sent while c ran
    assert first.outstanding == 0
    # a report of a call not known finished still counts it
    second = policy.pick_executor("f", call_id="d", now=clock())
    clock.advance(0.001)
    policy.process_load(load(int(second.executor_id.split("-")[1]), 1, last_call="d"))
    assert second.outstanding == 1
