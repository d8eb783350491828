"""Ephemeral values and bucket triggers, driven directly (no sockets): the store node's ephemeral table (TTL,
bound, never logged, gone after a restart), caches that never hold them, and batch / window / join triggers."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from cbctl.errors import InvalidArgument, StoreFull
from cbctl.runtime.lattices import LWWLattice, lattice_from_wire
from cbctl.runtime.store import triggers
from cbctl.runtime.store.embedded import EmbeddedBackend
from cbctl.runtime.store.ephemeral import EphemeralTable
from cbctl.runtime.store.node import StoreNode
from cbctl.runtime.wire import limits, serialization
from cbctl.runtime.wire.messages import (
    Ack,
    AddTrigger,
    CallRequest,
    DeleteRequest,
    EphemeralPut,
    ErrorResponse,
    GetRequest,
    GetResponse,
    KeyDropped,
    ListKeysRequest,
    PutRequest,
    SubscribeRequest,
    unpack,
)
from tests.unit.clocks import Clock


def lww(value: object, ts: int = 1, tombstone: bool = False) -> LWWLattice:
    return LWWLattice(ts, "w", None if tombstone else serialization.encode(value), tombstone=tombstone)


# --- the table ------------------------------------------------------------------------------------------


def test_a_value_lives_its_ttl_from_its_latest_put_then_is_gone():
    clock = Clock(100.0)
    table = EphemeralTable(clock=clock)
    table.put("k", lww(1), 10)
    clock.now += 9
    table.put("k", lww(2, ts=2), 10)  # a new put restarts the lifetime
    clock.now += 9
    assert serialization.decode(table.get("k").value) == 2
    assert table.expire() == []  # the first put's expiry is stale: the key stays
    clock.now += 1
    assert table.get("k") is None  # hidden as soon as it is due, before the timer removes it
    assert table.expire() == ["k"]
    assert table.stats()["ephemeral_keys"] == 0 and table.bytes == 0 and table.stats()["ephemeral_expired"] == 1


def test_the_default_ttl_applies_and_bad_ttls_are_refused():
    clock = Clock(100.0)
    table = EphemeralTable(clock=clock)
    table.put("k", lww(1), 0.0)  # 0 on the wire: the default
    assert table.time_until_due() == pytest.approx(300.0)
    for bad in (-1, 0, float("nan"), float("inf"), 86_401, "5", True):
        with pytest.raises(InvalidArgument, match="ttl"):
            limits.check_ttl(bad)
    assert limits.check_ttl(None, default_as=0.0) == 0.0 and limits.check_ttl(2) == 2.0


def test_a_put_past_the_bound_fails_and_evicts_nothing():
    table = EphemeralTable(max_bytes=3000, clock=Clock(100.0))
    table.put("a", lww(b"x" * 1000), 10)
    table.put("b", lww(b"x" * 1000), 10)
    with pytest.raises(StoreFull, match="ephemeral memory"):
        table.put("c", lww(b"x" * 1000), 10)
    assert table.get("a") is not None and table.get("b") is not None and table.get("c") is None
    table.put("a", lww(b"y", ts=2), 10)  # replacing a value by a smaller one frees room
    table.put("c", lww(b"x" * 1000), 10)


# --- the node -------------------------------------------------------------------------------------------


def one(node: StoreNode, request):
    replies, _ = node.handle_batch([request])
    return replies[0]


def test_ephemeral_values_are_served_marked_never_logged_and_gone_after_a_restart(tmp_path: Path):
    node = StoreNode(EmbeddedBackend(tmp_path))
    marker = b"EPHEMERAL-MARKER-" * 64
    assert isinstance(one(node, EphemeralPut(1, "tmp/a", lww(marker).to_wire(), 30.0)), Ack)
    assert isinstance(one(node, PutRequest(2, "dur/b", lww("durable").to_wire())), Ack)
    reply = one(node, GetRequest(3, ["dur/b", "tmp/a", "none"]))
    assert isinstance(reply, GetResponse) and reply.ephemeral == [1]
    assert serialization.decode(lattice_from_wire(reply.lattices[1]).value) == marker
    assert one(node, ListKeysRequest(4, "")).keys == ["dur/b", "tmp/a"]
    stats = node.stats()
    assert stats["ephemeral_keys"] == 1 and stats["ephemeral_bytes"] > len(marker) and stats["keys"] == 1
    node.close()
    logged = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b"durable" in logged and marker not in logged  # the log has the durable put, not the ephemeral one
    node = StoreNode(EmbeddedBackend(tmp_path))
    try:
        reply = one(node, GetRequest(5, ["dur/b", "tmp/a"]))
        assert reply.lattices[0] is not None and reply.lattices[1] is None and reply.ephemeral == []
    finally:
        node.close()


def test_a_key_is_durable_or_ephemeral_and_a_delete_of_an_ephemeral_one_is_not_logged(tmp_path: Path):
    node = StoreNode(EmbeddedBackend(tmp_path))
    try:
        one(node, PutRequest(1, "d", lww(1).to_wire()))
        refused = one(node, EphemeralPut(2, "d", lww(2, ts=2).to_wire(), 0.0))
        assert isinstance(refused, ErrorResponse) and "holds a durable value" in refused.message
        one(node, EphemeralPut(3, "e", lww(1).to_wire(), 0.0))
        refused = one(node, PutRequest(4, "e", lww(2, ts=2).to_wire()))
        assert isinstance(refused, ErrorResponse) and "holds an ephemeral value" in refused.message
        reserved = one(node, EphemeralPut(5, "__cb/x", lww(1).to_wire(), 0.0))
        assert isinstance(reserved, ErrorResponse) and reserved.error_type == "InvalidArgument"
        log_before = node.stats()["log_bytes"]
        assert isinstance(one(node, DeleteRequest(6, "e", 5, "w")), Ack)
        assert node.stats()["log_bytes"] == log_before and node.stats()["ephemeral_keys"] == 0
        one(node, PutRequest(7, "e", lww(3, ts=3).to_wire()))  # free for a durable value now
    finally:
        node.close()


def test_caches_holding_a_key_are_told_to_drop_it_when_it_becomes_ephemeral(tmp_path: Path):
    node = StoreNode(EmbeddedBackend(tmp_path))
    try:
        # an executor cached the key's absence (subscribed), then a function puts it ephemerally
        one(node, SubscribeRequest(1, "executor-0", "ipc://exec0", ["k"]))
        replies, pushes = node.handle_batch([EphemeralPut(2, "k", lww(1).to_wire(), 0.0)])
        assert pushes == [("ipc://exec0", KeyDropped("k"))] and node.stats()["subscriptions"] == 0
        one(node, SubscribeRequest(3, "executor-1", "ipc://exec1", ["k"]))  # a miss on an ephemeral key
        assert node.stats()["subscriptions"] == 0  # not kept: nothing will be pushed for it
    finally:
        node.close()


def test_the_node_expires_ephemeral_values_on_its_timer(tmp_path: Path):
    node = StoreNode(EmbeddedBackend(tmp_path))
    clock = Clock(100.0)
    node.ephemeral.clock = clock
    try:
        one(node, EphemeralPut(1, "k", lww(1).to_wire(), 2.0))
        assert node.time_until_due() is not None and node.time_until_due() <= 2.0
        clock.now += 2.5
        node.maintain()
        assert node.stats()["ephemeral_keys"] == 0 and one(node, GetRequest(2, ["k"])).lattices == [None]
    finally:
        node.close()


# --- bucket triggers ------------------------------------------------------------------------------------


def record(name: str, prefix: str = "", function: str = "f", **kind) -> LWWLattice:
    return lww({"name": name, "prefix": prefix, "function": function, "created_ns": 1, **kind})


def store_triggers(clock: Clock | None = None, values: dict | None = None, **options) -> triggers.StoreTriggers:
    values = values if values is not None else {}
    store = triggers.StoreTriggers(clock=clock or Clock(100.0), lookup=values.get, **options)
    store.response_address = "ipc://results"
    return store


def args_of(frames: list[bytes]) -> list[list]:
    calls = [unpack(f) for f in frames]
    assert all(isinstance(c, CallRequest) for c in calls)
    return [serialization.decode(c.args) for c in calls]


def test_a_batch_fires_once_n_distinct_keys_arrived_with_the_keys():
    store = store_triggers()
    store.on_write(triggers.PREFIX + "b", record("b", "ev/", batch=3))
    for key in ("ev/1", "ev/2", "ev/1", "other/x", "ev/3", "ev/4"):
        store.on_write(key, lww(key))
    assert args_of(store.take_due()) == [[["ev/1", "ev/2", "ev/3"]]]  # a rewrite of ev/1 counts once
    assert store.stats()["trigger_stats"]["b"]["waiting"] == 1  # ev/4, for the next batch
    store.on_write("ev/5", lww(5, tombstone=True))  # deletes never count
    assert store.take_due() == [] and store.stats()["trigger_stats"]["b"]["waiting"] == 1


def test_a_window_fires_every_t_with_what_arrived_and_not_at_all_when_nothing_did():
    clock = Clock(100.0)
    store = store_triggers(clock)
    store.on_write(triggers.PREFIX + "w", record("w", "ev/", window_s=2.0))
    store.tick()
    store.on_write("ev/a", lww(1))
    store.on_write("ev/b", lww(2))
    clock.now += 1.9
    store.tick()
    assert store.take_due() == []
    clock.now += 0.2
    store.tick()
    assert args_of(store.take_due()) == [[["ev/a", "ev/b"]]]
    clock.now += 2.1
    store.tick()  # an empty window: no call
    assert store.take_due() == [] and store.stats()["triggered_calls"] == 1
    store.on_write(triggers.PREFIX + "w", lww(None, tombstone=True))  # removed: no window left to tick
    assert store.windows == 0 and store.buckets == {}


def test_a_join_fires_when_every_named_key_was_put_with_values_when_asked():
    values = {"p/0": lww({"n": 0}), "p/1": lww({"n": 1})}
    store = store_triggers(values=values)
    store.on_write(triggers.PREFIX + "j", record("j", join=["p/0", "p/1"], values=True))
    store.on_write("p/1", values["p/1"])
    store.on_write("p/2", lww(2))  # not named
    assert store.take_due() == []
    store.on_write("p/0", values["p/0"])
    assert args_of(store.take_due()) == [[["p/1", "p/0"], [{"n": 1}, {"n": 0}]]]
    store.on_write("p/0", values["p/0"])  # the next round starts empty
    assert store.take_due() == [] and store.stats()["trigger_stats"]["j"]["waiting"] == 1


def test_values_over_the_limit_are_not_sent_and_count_as_an_error():
    big = {f"p/{i}": lww(b"x" * 600) for i in range(2)}
    store = store_triggers(values=big, max_args_bytes=1000)
    store.on_write(triggers.PREFIX + "j", record("j", join=list(big), values=True))
    for key, lattice in big.items():
        store.on_write(key, lattice)
    assert store.take_due() == []
    stats = store.stats()
    assert stats["trigger_errors"] == 1 and "MessageTooLarge" in stats["trigger_stats"]["j"]["last_error"]


def test_malformed_bucket_records_are_ignored():
    store = store_triggers()
    store.on_write(triggers.PREFIX + "two", record("two", "p/", batch=2, window_s=1.0))
    store.on_write(triggers.PREFIX + "neg", record("neg", "p/", batch=-1))
    store.on_write(triggers.PREFIX + "nop", record("nop", "", batch=2))
    store.on_write(triggers.PREFIX + "str", record("str", join="p/0"))
    assert store.stats()["triggers"] == 0


def test_the_message_carries_the_bucket_options_and_old_frames_still_unpack():
    frame = AddTrigger(1, "t", "", "f", 0, 0.0, ["a", "b"], True).pack()
    assert unpack(frame) == AddTrigger(1, "t", "", "f", 0, 0.0, ["a", "b"], True)
    old = msgpack.packb([*msgpack.unpackb(AddTrigger(1, "t", "p/", "f").pack())[:6]])  # without the new fields
    assert unpack(old) == AddTrigger(1, "t", "p/", "f")


def test_deploy_files_declare_bucket_triggers(tmp_path: Path):
    from cbctl.declare import load_file

    path = tmp_path / "buckets.py"
    path.write_text(
        "import cbctl\n\n"
        "@cbctl.function\n"
        "def f(cb, keys):\n"
        "    return keys\n\n"
        "cbctl.trigger('every10', prefix='ev/', function=f, batch=10)\n"
        "cbctl.trigger('tick', prefix='ev/', function='f', window=2.5, values=True)\n"
        "cbctl.trigger('all', function=f, join=['a', 'b'])\n")
    declared = {t.name: t for t in load_file(path).triggers}
    assert (declared["every10"].prefix, declared["every10"].batch) == ("ev/", 10)
    assert (declared["tick"].window, declared["tick"].values) == (2.5, True)
    assert (declared["all"].prefix, declared["all"].join, declared["all"].function) == ("", ["a", "b"], "f")
    from cbctl.declare import trigger

    with pytest.raises(InvalidArgument, match="names no function"):
        trigger("t", "p/")
    with pytest.raises(InvalidArgument, match="not one string"):
        trigger("t", function="f", join="a")


def test_deploy_checks_a_bucket_triggers_function_against_what_the_bucket_passes(tmp_path: Path):
    """A per-put trigger calls (cb, key, value), a bucket (cb, keys), with values=True (cb, keys, values): a function
    that takes the other shape is refused before anything is registered, naming the shape it must take."""
    from cbctl.declare import DeployFileError, load_file, prepare

    def deploy(declaration: str) -> None:
        path = tmp_path / "t.py"
        path.write_text("import cbctl\n\n@cbctl.function\ndef f(cb, keys):\n    return keys\n\n"
                        "@cbctl.function\ndef g(cb, key, value):\n    return key\n\n" + declaration + "\n")
        prepare(load_file(path), path)

    deploy("cbctl.trigger('b', prefix='p/', function='f', batch=2)")
    deploy("cbctl.trigger('p', prefix='p/', function='g')")
    deploy("cbctl.trigger('v', prefix='p/', function='g', window=1.0, values=True)")
    with pytest.raises(DeployFileError, match=r"calls g with \(keys\).*define it as g\(cb, keys\)"):
        deploy("cbctl.trigger('j', function='g', join=['a', 'b'])")
    with pytest.raises(DeployFileError, match=r"calls f with \(key, value\)"):
        deploy("cbctl.trigger('p', prefix='p/', function='f')")
