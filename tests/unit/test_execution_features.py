"""The pure parts of batching, multi-exec and storage triggers: no processes, no sockets."""

from __future__ import annotations

import collections

import msgpack
import pytest

from cbctl.errors import InvalidArgument, InvalidDag
from cbctl.runtime import multiexec
from cbctl.runtime.continuation import Continue
from cbctl.runtime.executor import batching
from cbctl.runtime.lattices import LWWLattice, MaxLattice
from cbctl.runtime.store import triggers
from cbctl.runtime.wire import serialization
from cbctl.runtime.wire.messages import CallRequest, CallResult, DagTrigger, unpack
from tests.unit.clocks import Clock


def trigger(function: str, source: str = "", payload: object = (), call_id: str = "c1",
            edges: list[list[str]] | None = None, extras: dict | None = None, version: int = 1) -> DagTrigger:
    return DagTrigger(call_id, "d", function, {}, {function: version}, edges or [], source,
                      serialization.encode(list(payload) if not source else payload), "", False, "lww", extras or {})


# --- batching -------------------------------------------------------------------------------------------


def test_take_matching_takes_the_oldest_calls_of_one_function_up_to_the_limit_and_keeps_the_rest_in_order():
    ready = collections.deque((trigger(name, call_id=str(i)), []) for i, name in enumerate("fgffgff"))
    taken = batching.take_matching(ready, "f", version=1, limit=3)
    assert [t.call_id for t, _ in taken] == ["0", "2", "3"]
    assert [(t.function, t.call_id) for t, _ in ready] == [("g", "1"), ("g", "4"), ("f", "5"), ("f", "6")]
    assert batching.take_matching(ready, "f", version=1, limit=0) == []


def test_take_matching_leaves_calls_that_need_newer_code():
    ready = collections.deque([(trigger("f", version=5), []), (trigger("f", version=1), [])])
    assert [t.versions["f"] for t, _ in batching.take_matching(ready, "f", version=1, limit=10)] == [1]
    assert len(ready) == 1


def test_columns_turn_per_call_arguments_into_per_parameter_lists():
    assert batching.columns([[1, "a"], [2, "b"], [3, "c"]]) == [[1, 2, 3], ["a", "b", "c"]]


@pytest.mark.parametrize("result, message", [
    (5, r"returned int for a batch of 2 call\(s\)"),
    ([1], r"returned 1 results for a batch of 2 call\(s\)"),
    ({"a": 1, "b": 2}, "returned dict"),
])
def test_split_results_refuses_anything_but_one_result_per_call(result, message):
    with pytest.raises(batching.BatchResultError, match=message):
        batching.split_results("f", result, 2)


def test_split_results_accepts_lists_and_tuples():
    assert batching.split_results("f", (1, 2), 2) == [1, 2]


# --- multi-exec -----------------------------------------------------------------------------------------

FAN = [["s", "a"], ["s", "b"], ["s", "c"], ["a", "m"], ["b", "m"], ["c", "m"], ["m", "j"]]


def test_run_counts_multiply_through_chains_of_multiexec_functions():
    fns = ["s", "a", "b", "c", "m", "j"]
    assert multiexec.run_counts(fns, FAN, ["m"]) == {"s": 1, "a": 1, "b": 1, "c": 1, "m": 3, "j": 1}
    chain = FAN[:-1] + [["m", "n"]]
    assert multiexec.run_counts(["s", "a", "b", "c", "m", "n"], chain, ["m", "n"])["n"] == 3
    assert multiexec.plan_extras(fns, FAN, {}) == {}
    assert multiexec.plan_extras(fns, FAN, {"multiexec": ["m"]}) == {"mx": {"m": 3}}


def test_validate_names_only_the_dags_functions_once():
    assert multiexec.validate("d", ["a", "b"], ["b"]) == ["b"]
    for option, message in ((["z"], "not one of its functions"), (["a", "a"], "twice"), ("a", "must be a list")):
        with pytest.raises(InvalidDag, match=message):
            multiexec.validate("d", ["a", "b"], option)


def test_a_multiexec_step_runs_per_trigger_and_its_successor_waits_for_all_of_them_as_a_list():
    state, ready = multiexec.MultiExecState(), collections.deque()
    extras = {"mx": {"m": 3}}
    for source in ("a", "b", "c"):
        assert state.on_trigger(trigger("m", source, payload=source, edges=FAN, extras=extras), ready)
    assert [(t.function, t.source) for t, _ in ready] == [("m", "a"), ("m", "b"), ("m", "c")]
    ready.clear()
    for value in (1, 2):
        assert state.on_trigger(trigger("j", "m", payload=value, edges=FAN, extras=extras), ready)
        assert not ready
    assert state.on_trigger(trigger("j", "m", payload=3, edges=FAN, extras=extras), ready)
    (step, inputs), = ready
    assert [serialization.decode(t.payload) for t in inputs] == [[1, 2, 3]]
    # an ordinary join elsewhere in the DAG is left to the executor
    assert not state.on_trigger(trigger("a", "s", payload=0, edges=FAN, extras=extras), ready)


def test_a_multiexec_sink_gathers_every_result_and_a_failure_ends_the_call():
    state = multiexec.MultiExecState()
    sink = trigger("m", "a", edges=FAN[:-1], extras={"mx": {"m": 2}})
    ok = CallResult("c1", True, serialization.encode("x"))
    assert state.on_result(sink, ok) is None
    gathered = state.on_result(sink, CallResult("c1", True, serialization.encode("y")))
    assert serialization.decode(gathered.value) == ["x", "y"]
    other = trigger("m", "a", call_id="c2", edges=FAN[:-1], extras={"mx": {"m": 2}})
    failure = CallResult("c2", False, b"", "FunctionError", "boom")
    assert state.on_result(other, failure) is failure
    assert state.on_result(other, CallResult("c2", True, serialization.encode(1))) is None


def test_continue_needs_a_name():
    assert Continue("dag", 1, 2).args == (1, 2)
    with pytest.raises(InvalidArgument, match="needs the name"):
        Continue("")


# --- storage triggers -----------------------------------------------------------------------------------


def lww(value: object, tombstone: bool = False) -> LWWLattice:
    return LWWLattice(1, "w", None if tombstone else serialization.encode(value), tombstone=tombstone)


def record(name: str, prefix: str, function: str = "f") -> LWWLattice:
    return lww({"name": name, "prefix": prefix, "function": function, "created_ns": 1})


def test_the_store_index_fires_one_call_per_matching_put_with_key_and_value():
    store = triggers.StoreTriggers(clock=Clock(100.0))
    store.response_address = "ipc://results"
    store.on_write(triggers.PREFIX + "t", record("t", "in/", "handler"))
    store.on_write("in/a", lww({"v": 1}))
    store.on_write("out/a", lww(2))
    store.on_write("in/b", lww(3, tombstone=True))  # a delete
    store.on_write("__cb/fn/in", lww(4))
    (frame,) = store.take_due()
    call = unpack(frame)
    assert isinstance(call, CallRequest)
    assert (call.name, call.response_address) == ("handler", "ipc://results")
    assert serialization.decode(call.args) == ["in/a", {"v": 1}]
    assert store.stats()["triggered_calls"] == 1 and store.stats()["trigger_pending"] == 1
    store.on_result(CallResult(call.call_id, True, b""))
    assert store.stats()["trigger_pending"] == 0
    store.on_write(triggers.PREFIX + "t", lww(None, tombstone=True))
    store.on_write("in/c", lww(5))
    assert store.take_due() == [] and store.stats()["triggers"] == 0


def test_a_call_without_a_result_is_sent_again_then_given_up():
    clock = Clock(100.0)
    store = triggers.StoreTriggers(clock=clock, retry_s=10, max_attempts=2)
    store.load([(triggers.PREFIX + "t", record("t", "k"))])
    store.on_write("k1", MaxLattice(7))  # not last-writer-wins: the revealed value is sent
    (first,) = store.take_due()
    assert serialization.decode(unpack(first).args) == ["k1", 7]
    clock.now += 5
    assert store.take_due() == []
    clock.now += 5
    assert store.take_due() == [first]  # the same call id: a duplicate the function may see
    clock.now += 10
    assert store.take_due() == []
    stats = store.stats()
    assert (stats["trigger_retries"], stats["trigger_dropped"], stats["trigger_pending"]) == (1, 1, 0)


def test_failed_calls_are_counted_per_trigger_and_malformed_records_ignored():
    store = triggers.StoreTriggers(clock=Clock(100.0))
    store.on_write(triggers.PREFIX + "bad", lww({"name": "bad"}))
    store.on_write(triggers.PREFIX + "raw", LWWLattice(1, "w", msgpack.packb([1, 2])))
    store.on_write(triggers.PREFIX + "t", record("t", "k"))
    assert store.stats()["triggers"] == 1
    store.on_write("k", lww(1))
    (frame,) = store.take_due()
    store.on_result(CallResult(unpack(frame).call_id, False, b"", "FunctionError", "no", remote_type="KeyError"))
    stats = store.stats()
    assert stats["trigger_errors"] == 1
    assert stats["trigger_stats"]["t"] == {"fired": 1, "errors": 1, "last_error": "KeyError: no"}


def test_the_in_flight_bound_forgets_the_oldest_call():
    store = triggers.StoreTriggers(clock=Clock(100.0), limit=2)
    store.on_write(triggers.PREFIX + "t", record("t", "k"))
    for i in range(3):
        store.on_write(f"k{i}", lww(i))
    assert len(store.take_due()) == 3
    assert store.stats()["trigger_pending"] == 2 and store.stats()["trigger_dropped"] == 1


def test_a_restarted_store_node_recovers_its_triggers_from_the_log(tmp_path):
    from cbctl.runtime.store.embedded import EmbeddedBackend
    from cbctl.runtime.store.node import StoreNode
    from cbctl.runtime.wire.messages import PutRequest

    node = StoreNode(EmbeddedBackend(tmp_path))
    node.handle_batch([PutRequest(1, triggers.PREFIX + "t", record("t", "in/").to_wire())])
    node.handle_batch([PutRequest(2, "in/a", lww(1).to_wire())])
    assert node.stats()["triggered_calls"] == 1
    node.close()
    node = StoreNode(EmbeddedBackend(tmp_path))
    try:
        assert list(node.triggers.index) == ["t"] and node.stats()["triggered_calls"] == 0  # replay fires nothing
        node.handle_batch([PutRequest(3, "in/b", lww(2).to_wire())])
        assert node.stats()["triggered_calls"] == 1
    finally:
        node.close()
