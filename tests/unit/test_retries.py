"""The scheduler's in-flight table and the executors' attempt filter (runtime/retries.py), with a fake clock."""

from __future__ import annotations

from cbctl.runtime.retries import ATTEMPT_KEY, AttemptFilter, InFlightTable, with_attempt
from cbctl.runtime.wire.messages import CallRequest


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def request(call_id: str) -> CallRequest:
    return CallRequest(call_id, "chain", b"", {}, "ipc://client", False, "lww", [])


E1, E2 = "ipc://e1", "ipc://e2"


def test_a_lost_executor_takes_exactly_the_calls_that_used_it():
    table = InFlightTable(clock=Clock())
    table.add(request("a"), {"f": E1, "g": E2})
    table.add(request("b"), {"f": E2, "g": E2})
    table.add(request("c"), {"f": E1, "g": E1})
    lost = table.take_lost(E1)
    assert sorted(c.request.call_id for c in lost) == ["a", "c"]
    assert "a" not in table and "c" not in table and "b" in table
    assert table.take_lost(E1) == []  # taken once: a second report of the same death re-dispatches nothing


def test_completed_calls_are_forgotten_and_unknown_ids_are_ignored():
    table = InFlightTable(clock=Clock())
    table.add(request("a"), {"f": E1})
    table.add(request("b"), {"f": E1})
    table.complete(["a", "never-sent"])
    assert len(table) == 1 and "b" in table
    assert [c.request.call_id for c in table.take_lost(E1)] == ["b"]


def test_calls_expire_by_age_oldest_first_and_a_redispatch_counts_from_its_own_time():
    clock = Clock()
    table = InFlightTable(clock=clock, max_age_s=10)
    table.add(request("old"), {"f": E1})
    clock.now += 6
    table.add(request("young"), {"f": E1})
    table.add(request("old"), {"f": E2}, attempt=2)  # dispatched again: young again, at the back
    clock.now += 5
    assert table.expire() == 0
    clock.now += 5.5
    assert table.expire() == 2 and len(table) == 0 and table.forgotten == 2


def test_the_size_bound_forgets_the_oldest_dispatch():
    table = InFlightTable(clock=Clock(), limit=2)
    for call_id in ("a", "b", "c"):
        table.add(request(call_id), {"f": E1})
    assert "a" not in table and "b" in table and "c" in table and table.forgotten == 1


def test_attempts_are_counted_up_to_the_limit():
    table = InFlightTable(clock=Clock(), max_attempts=3)
    table.add(request("a"), {"f": E1})
    (call,) = table.take_lost(E1)
    assert call.attempt == 1 and not table.out_of_attempts(call)
    table.add(call.request, {"f": E2}, attempt=call.attempt + 1)
    (call,) = table.take_lost(E2)
    table.add(call.request, {"f": E1}, attempt=call.attempt + 1)
    (call,) = table.take_lost(E1)
    assert call.attempt == 3 and table.out_of_attempts(call)


def test_a_first_attempt_is_not_tracked_and_carries_nothing():
    attempts = AttemptFilter(clock=Clock())
    assert with_attempt({}, 1) == {}
    assert attempts.admit("a", {}) == (True, False)
    assert attempts.admit("a", None) == (True, False)
    assert attempts.latest == {}


def test_a_newer_attempt_wins_and_the_older_ones_triggers_are_dropped():
    attempts = AttemptFilter(clock=Clock())
    assert attempts.admit("a", {}) == (True, False)  # attempt 1's trigger
    assert attempts.admit("a", with_attempt({"depth": 1}, 2)) == (True, True)  # starts attempt 2
    assert attempts.admit("a", {}) == (False, False)  # attempt 1's late trigger: dropped
    assert attempts.admit("a", {ATTEMPT_KEY: 2}) == (True, False)  # attempt 2's other trigger joins it
    assert attempts.admit("a", {ATTEMPT_KEY: 3}) == (True, True)
    assert attempts.admit("a", {ATTEMPT_KEY: 2}) == (False, False)
    assert attempts.admit("b", {}) == (True, False)  # other calls are not affected


def test_a_newer_attempt_arriving_first_drops_the_older_one_arriving_later():
    attempts = AttemptFilter(clock=Clock())
    assert attempts.admit("a", {ATTEMPT_KEY: 2}) == (True, True)
    assert attempts.admit("a", {}) == (False, False)


def test_attempts_are_forgotten_after_the_join_timeout():
    clock = Clock()
    attempts = AttemptFilter(clock=clock)
    attempts.admit("a", {ATTEMPT_KEY: 2})
    clock.now += 5
    attempts.admit("b", {ATTEMPT_KEY: 2})
    attempts.expire(max_age_s=3)
    assert list(attempts.latest) == ["b"]
