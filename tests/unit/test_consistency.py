"""The consistency modes' pure logic: tokens, versions, per-call sessions, snapshots, client sessions."""

from __future__ import annotations

import pytest

from cbctl.errors import NoSuchKey
from cbctl.runtime.consistency import (
    CAUSAL,
    CAUSAL_FLOOR,
    HOLDERS,
    LWW,
    REPEATABLE_READ,
    SESSION,
    VERSIONS,
    WRITES,
    CallSession,
    CausalCounter,
    ClientSession,
    SnapshotTable,
    causal_version,
    covers,
    merge_extras,
    merge_tokens,
    reveal,
    version_of,
    with_client_session,
    write_token,
)
from cbctl.runtime.lattices import CausalLattice, LWWLattice, Ordering, VectorClock
from cbctl.runtime.wire import serialization


def lww(ts: int, value: object = "v", writer: str = "w") -> LWWLattice:
    return LWWLattice(ts, writer, serialization.encode(value))


def causal(clock: dict[str, int], *values: object, deps: dict[str, dict[str, int]] | None = None) -> CausalLattice:
    return CausalLattice(VectorClock(clock), {k: VectorClock(c) for k, c in (deps or {}).items()},
                         [serialization.encode(v) for v in values])


class FixedClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- tokens and versions ---------------------------------------------------------------------------------


def test_an_lww_token_is_covered_by_the_same_or_a_later_write_only():
    token = write_token(lww(100))
    assert token == 100
    assert covers(lww(100), token) and covers(lww(250), token)
    assert not covers(lww(99), token)
    assert not covers(None, token)
    assert not covers(causal({"a": 5}, "x"), token)


def test_a_causal_token_is_covered_by_a_dominating_clock_only():
    token = write_token(causal({"a": 2, "b": 1}, "x"))
    assert token == {"a": 2, "b": 1}
    assert covers(causal({"a": 2, "b": 1}, "x"), token)
    assert covers(causal({"a": 3, "b": 1}, "y"), token)
    assert not covers(causal({"a": 2}, "x"), token)  # misses b's write
    assert not covers(causal({"b": 5}, "z"), token)  # concurrent
    assert covers(causal({"a": 2, "b": 1}, "x"), VectorClock(token))
    assert not covers(lww(10**20), token)


def test_tokens_merge_to_the_later_write():
    assert merge_tokens(None, 5) == 5
    assert merge_tokens(7, 5) == 7
    assert merge_tokens({"a": 1, "b": 3}, {"a": 2}) == {"a": 2, "b": 3}
    assert merge_tokens(7, {"a": 1}) == {"a": 1}  # the key changed kind: the later write counts


def test_versions_identify_one_write():
    assert version_of(None) is None
    assert version_of(lww(1, "a")) == version_of(lww(1, "a"))
    assert version_of(lww(1, "a")) != version_of(lww(2, "a"))
    assert version_of(causal({"a": 1}, "x")) == version_of(causal({"a": 1}, "x"))
    assert version_of(causal({"a": 1}, "x")) != version_of(causal({"a": 1}, "y"))


def test_reveal_decodes_per_mode():
    assert reveal("k", lww(1, {"n": 1}), LWW) == {"n": 1}
    assert reveal("k", lww(1, {"n": 1}), CAUSAL) == [{"n": 1}]
    both = causal({"a": 1}, "x").merge(causal({"b": 1}, "y"))
    assert sorted(reveal("k", both, LWW)) == ["x", "y"]
    assert sorted(reveal("k", both, CAUSAL)) == ["x", "y"]
    with pytest.raises(NoSuchKey, match="'k'"):
        reveal("k", None, LWW)
    with pytest.raises(NoSuchKey):
        reveal("k", LWWLattice(5, "w", None, tombstone=True), REPEATABLE_READ)


# --- causal writes ----------------------------------------------------------------------------------------


def test_a_causal_write_dominates_what_the_call_read_and_depends_on_the_rest():
    read = causal({"e0": 3}, "a").merge(causal({"e1": 4}, "b"))  # two concurrent versions
    floor = {"k": read.clock, "other": VectorClock({"e1": 9})}
    written = causal_version(floor, "k", serialization.encode("resolved"), "e0", CausalCounter(lambda: 0))
    assert written.clock.compare(read.clock) is Ordering.AFTER
    assert read.merge(written) == written  # the resolved value replaces both
    assert written.dependencies == {"other": VectorClock({"e1": 9})}


def test_blind_writes_from_two_executors_are_concurrent_and_both_kept():
    first = causal_version({}, "k", b"\x01", "e0", CausalCounter(lambda: 0))
    second = causal_version({}, "k", b"\x02", "e1", CausalCounter(lambda: 0))
    assert first.clock.compare(second.clock) is Ordering.CONCURRENT
    assert first.merge(second).values == {b"\x01", b"\x02"}


def test_the_counter_only_grows_and_starts_from_the_wall_clock():
    now = [5_000_000]
    counter = CausalCounter(lambda: now[0])
    first = counter.next()
    assert first == 5000  # microseconds: above anything an earlier run of the executor used
    assert counter.next() == first + 1
    assert counter.next(floor=10**9) == 10**9 + 1
    now[0] = 0  # the wall clock stepping back never makes it go down
    assert counter.next() == 10**9 + 2


# --- per-call sessions ------------------------------------------------------------------------------------


def test_a_session_that_touched_nothing_passes_extras_on_as_they_came():
    extras = {"mx": {"f": 2}, SESSION: {"k": 5}}
    session = CallSession("c1", LWW, extras)
    assert session.outgoing() == extras


def test_the_client_session_decides_which_cached_copies_are_fresh():
    session = CallSession("c1", LWW, {SESSION: {"k": 100}})
    fresh = session.freshness("k")
    assert fresh is not None and fresh(lww(100)) and not fresh(lww(99))
    assert session.freshness("other") is None


def test_causal_floors_come_from_the_upstream_and_every_read():
    session = CallSession("c1", CAUSAL, {CAUSAL_FLOOR: {"k": {"b": 2}}})
    assert session.floor == {"k": VectorClock({"b": 2})}
    reply = causal({"e": 4}, "re: hi", deps={"message": {"e": 3}})
    session.observe("reply", reply)
    assert session.floor["message"] == VectorClock({"e": 3})
    fresh = session.freshness("message")
    assert not fresh(causal({"e": 2}, "old")) and fresh(causal({"e": 3}, "hi"))
    assert not fresh(None)
    assert session.outgoing()[CAUSAL_FLOOR]["message"] == {"e": 3}


def test_causal_reads_include_the_clients_writes_without_depending_on_them():
    session = CallSession("c1", CAUSAL, {SESSION: {"k": {"a": 1}, "lwwkey": 7}, CAUSAL_FLOOR: {"k": {"b": 2}}})
    assert session.floor == {"k": VectorClock({"b": 2})}  # a token is a clock without its dependencies
    fresh = session.freshness("k")
    assert fresh(causal({"a": 1, "b": 2}, "x"))
    assert not fresh(causal({"b": 2}, "x")) and not fresh(causal({"a": 1}, "x"))
    assert session.freshness("lwwkey")(lww(7))  # an LWW write of the client still counts
    assert session.freshness("untouched") is None


def test_repeatable_read_versions_and_holders_travel_on():
    session = CallSession("c1", REPEATABLE_READ, {})
    session.record_version("k", lww(5, "a"), "ipc://e0")
    session.record_version("j", None, "ipc://e0")
    session.record_write("k", 6)
    out = session.outgoing()
    assert out[VERSIONS] == {"k": [[5, "w", False], "ipc://e0"], "j": [None, "ipc://e0"]}
    assert out[HOLDERS] == ["ipc://e0"]
    assert out[WRITES] == {"k": 6}
    downstream = CallSession("c1", REPEATABLE_READ, out)
    assert downstream.versions["k"][0] == version_of(lww(5, "a"))


def test_joining_branches_merges_writes_holders_and_floors_and_keeps_the_first_version():
    left = {VERSIONS: {"k": [[1, "w", False], "A"]}, HOLDERS: ["A"], WRITES: {"x": 5},
            CAUSAL_FLOOR: {"m": {"a": 1}}, "mx": {"f": 2}}
    right = {VERSIONS: {"k": [[2, "w", False], "B"], "j": [None, "B"]}, HOLDERS: ["B"], WRITES: {"x": 9, "y": 1},
             CAUSAL_FLOOR: {"m": {"b": 1}}, "mx": {"f": 3}}
    merged = merge_extras([left, right])
    assert merged[VERSIONS] == {"k": [[1, "w", False], "A"], "j": [None, "B"]}
    assert merged[HOLDERS] == ["A", "B"]
    assert merged[WRITES] == {"x": 9, "y": 1}
    assert merged[CAUSAL_FLOOR] == {"m": {"a": 1, "b": 1}}
    assert merged["mx"] == {"f": 2}
    assert left[HOLDERS] == ["A"] and left[WRITES] == {"x": 5}  # inputs untouched


def test_the_scheduler_takes_only_the_session_from_a_client():
    base = {"mx": {"f": 2}}
    assert with_client_session(base, {SESSION: {"k": 1}, "mx": "forged"}) == {"mx": {"f": 2}, SESSION: {"k": 1}}
    assert with_client_session(base, {}) is base
    assert with_client_session(base, "junk") is base
    assert with_client_session(base, {SESSION: "junk"}) is base


# --- snapshots --------------------------------------------------------------------------------------------


def test_snapshots_are_found_released_and_expired_oldest_first():
    table = SnapshotTable(ttl_s=10)
    table.keep("c1", "k", lww(1), now=0)
    table.keep("c2", "k", None, now=5)
    assert table.find("c1", "k") == (True, lww(1))
    assert table.find("c2", "k") == (True, None)
    assert table.find("c1", "other") == (False, None)
    table.release(["c1", "unknown"])
    assert table.find("c1", "k") == (False, None)
    table.keep("c3", "k", lww(3), now=12)
    assert table.expire(now=16) == 1  # c2 is past the TTL, c3 is not
    assert len(table) == 1 and table.expired == 1


# --- the client's session ----------------------------------------------------------------------------------


def test_a_client_session_is_empty_until_it_writes_and_forgets_after_the_horizon():
    clock = FixedClock()
    session = ClientSession(horizon_s=10, max_keys=100, clock=clock)
    assert session.extras() == {}
    session.record_result({WRITES: {"k": 5}})
    session.record({"k": 3, "j": {"a": 1}})
    assert session.extras() == {SESSION: {"k": 5, "j": {"a": 1}}}
    clock.now = 11
    session.record({"late": 1})
    assert session.extras() == {SESSION: {"late": 1}}
    clock.now = 30
    assert session.extras() == {}


def test_a_client_session_keeps_the_most_recent_keys():
    session = ClientSession(horizon_s=10, max_keys=3, clock=FixedClock())
    for i in range(5):
        session.record({f"k{i}": i})
    assert session.extras() == {SESSION: {"k2": 2, "k3": 3, "k4": 4}}
