"""The store node's state and handlers, driven directly (no sockets): merges, tombstones, listing, the
write-ahead log behind every acknowledged write, compaction and recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbctl.runtime.lattices import LWWLattice, MaxLattice, SetLattice, lattice_from_wire
from cbctl.runtime.store.embedded import EmbeddedBackend
from cbctl.runtime.store.node import StoreNode
from cbctl.runtime.wire.messages import (
    Ack,
    DeleteRequest,
    ErrorResponse,
    GetRequest,
    GetResponse,
    KeyUpdate,
    ListKeysRequest,
    ListKeysResponse,
    PutRequest,
    StoreStatsRequest,
    StoreStatsResponse,
    SubscribeRequest,
)


def open_node(data_dir: Path, **options) -> StoreNode:
    return StoreNode(EmbeddedBackend(data_dir, **options))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def node(data_dir: Path):
    store = open_node(data_dir)
    yield store
    store.close()


def lww(value: bytes, timestamp: int, writer: str = "w") -> list:
    return LWWLattice(timestamp, writer, value).to_wire()


def one(node: StoreNode, request):
    replies, _ = node.handle_batch([request])
    assert len(replies) == 1
    return replies[0]


def get(node: StoreNode, key: str):
    reply = one(node, GetRequest(1, [key]))
    assert isinstance(reply, GetResponse)
    wire = reply.lattices[0]
    return None if wire is None else lattice_from_wire(wire)


def put(node: StoreNode, key: str, wire: list) -> None:
    assert isinstance(one(node, PutRequest(1, key, wire)), Ack)


def delete(node: StoreNode, key: str, timestamp: int, writer: str = "w") -> None:
    assert isinstance(one(node, DeleteRequest(1, key, timestamp, writer)), Ack)


def list_keys(node: StoreNode, prefix: str = "") -> list[str]:
    reply = one(node, ListKeysRequest(1, prefix))
    assert isinstance(reply, ListKeysResponse)
    return reply.keys


def test_put_then_get(node):
    put(node, "k", lww(b"v1", 10))
    assert get(node, "k") == LWWLattice(10, "w", b"v1")
    assert get(node, "missing") is None


def test_put_is_a_merge_newer_wins_older_is_ignored(node):
    put(node, "k", lww(b"new", 20))
    put(node, "k", lww(b"old", 10))
    assert get(node, "k").value == b"new"
    put(node, "k", lww(b"tie-higher-writer", 20, writer="x"))
    assert get(node, "k").value == b"tie-higher-writer"


def test_other_lattices_merge(node):
    put(node, "set", SetLattice(frozenset({1, 2})).to_wire())
    put(node, "set", SetLattice(frozenset({2, 3})).to_wire())
    assert get(node, "set").reveal() == frozenset({1, 2, 3})
    put(node, "max", MaxLattice(5).to_wire())
    put(node, "max", MaxLattice(3).to_wire())
    assert get(node, "max").reveal() == 5


def test_multi_get_answers_in_order(node):
    put(node, "a", lww(b"1", 1))
    put(node, "c", lww(b"3", 1))
    reply = one(node, GetRequest(9, ["c", "b", "a"]))
    assert reply.req_id == 9
    assert [None if w is None else lattice_from_wire(w).value for w in reply.lattices] == [b"3", None, b"1"]


def test_delete_tombstone_wins_by_lww_order_and_loses_to_a_newer_write(node):
    put(node, "k", lww(b"v", 100))
    delete(node, "k", 200)
    assert get(node, "k").tombstone
    assert list_keys(node) == []
    put(node, "k", lww(b"stale", 150))  # older than the delete: stays deleted
    assert get(node, "k").tombstone
    put(node, "k", lww(b"revived", 300))  # newer than the delete: wins
    assert get(node, "k").value == b"revived"
    assert list_keys(node) == ["k"]


def test_delete_older_than_the_value_loses(node):
    put(node, "k", lww(b"v", 500))
    delete(node, "k", 400)
    assert get(node, "k").value == b"v"


def test_list_by_prefix_excludes_tombstones(node):
    for key in ("app/a", "app/b", "app/c", "other/x", "__cb/fn/f"):
        put(node, key, lww(b"v", 10))
    delete(node, "app/b", 20)
    assert list_keys(node, "app/") == ["app/a", "app/c"]
    assert list_keys(node, "") == ["__cb/fn/f", "app/a", "app/c", "other/x"]
    assert list_keys(node, "nothing/") == []
    assert node.stats()["keys"] == 4


def test_bad_requests_get_an_error_reply_and_the_batch_goes_on(node):
    replies, _ = node.handle_batch([
        PutRequest(1, "k", ["nosuchlattice", 1]),
        PutRequest(2, "", lww(b"v", 1)),
        GetRequest(3, 5),  # keys is not a list
        Ack(4),  # not a request the store serves
        PutRequest(5, "good", lww(b"v", 1)),
    ])
    assert [type(r) for r in replies] == [ErrorResponse] * 4 + [Ack]
    assert [r.req_id for r in replies] == [1, 2, 3, 4, 5]
    assert "non-empty string" in replies[1].message
    assert node.stats()["request_errors"] == 4
    assert get(node, "good").value == b"v"
    assert get(node, "k") is None


def test_subscribers_receive_merged_values(node):
    assert isinstance(one(node, SubscribeRequest(1, "exec-0", "ipc://exec-0", ["k"])), Ack)
    put(node, "k", lww(b"new", 20))
    _, pushes = node.handle_batch([PutRequest(2, "k", lww(b"old", 10)), PutRequest(3, "other", lww(b"x", 1))])
    assert pushes == [("ipc://exec-0", KeyUpdate("k", lww(b"new", 20)))], "subscribers get the merged value"
    one(node, SubscribeRequest(4, "exec-0", "ipc://exec-0", ["k"], unsubscribe=True))
    _, pushes = node.handle_batch([PutRequest(5, "k", lww(b"newer", 30))])
    assert pushes == []


def test_stats_count_requests(node):
    put(node, "k", lww(b"abc", 1))
    one(node, GetRequest(1, ["k", "x"]))
    delete(node, "x", 1)
    list_keys(node)
    reply = one(node, StoreStatsRequest(7))
    assert isinstance(reply, StoreStatsResponse) and reply.req_id == 7
    stats = reply.stats
    assert (stats["puts"], stats["gets"], stats["deletes"], stats["lists"]) == (1, 2, 1, 1)
    assert stats["keys"] == 1 and stats["bytes"] == 3 and stats["log_bytes"] > 0


def test_a_batch_is_in_the_log_when_handle_batch_returns(data_dir):
    """No fsync, no close: what handle_batch acknowledged is in the log file already, so a process crash
    right after the ack (the OS keeps the written bytes) loses nothing."""
    first = open_node(data_dir, durability="batch")
    batch = [PutRequest(i, f"k{i}", lww(str(i).encode(), i + 1)) for i in range(50)]
    batch.append(DeleteRequest(99, "k7", 10**9, "w"))
    replies, _ = first.handle_batch(batch)
    assert all(isinstance(r, Ack) for r in replies)
    # Deliberately not closed or maintained: a second node reads the directory as a restarted store would.
    second = open_node(data_dir)
    try:
        assert len(second.backend.data) == 50
        assert second.live_keys() == sorted(f"k{i}" for i in range(50) if i != 7)
        assert second.backend.data["k42"].value == b"42"
        assert second.backend.data["k7"].tombstone
    finally:
        second.close()
        first.close()


def test_torn_last_record_is_dropped_on_recovery(data_dir):
    node = open_node(data_dir)
    node.handle_batch([PutRequest(1, "kept", lww(b"v", 1))])
    node.close()
    with open(data_dir / "wal.log", "ab") as log_file:
        log_file.write(b"\x40\x00\x00\x00\x01\x02")  # a frame header cut short: a crash mid-append
    recovered = open_node(data_dir)
    try:
        assert recovered.live_keys() == ["kept"]
        recovered.handle_batch([PutRequest(2, "after", lww(b"v", 2))])
    finally:
        recovered.close()
    again = open_node(data_dir)
    try:
        assert again.live_keys() == ["after", "kept"]
    finally:
        again.close()


def test_compaction_then_recovery(data_dir):
    node = open_node(data_dir, compact_bytes=2_000)
    for i in range(200):
        node.handle_batch([PutRequest(i, f"k{i % 40}", lww(f"v{i}".encode(), i + 1))])
    node.handle_batch([DeleteRequest(0, "k3", 10**6, "w")])
    log_before = node.backend.wal.log_bytes
    assert log_before > 2_000 and node.backend.wal.snapshot_bytes == 0
    node.maintain()
    assert node.backend.wal.snapshot_bytes > 0, "a log past compact_bytes is compacted into a snapshot"
    assert node.backend.wal.log_bytes < log_before
    node.handle_batch([PutRequest(1, "k0", lww(b"after-compaction", 10**7)), PutRequest(2, "fresh", lww(b"f", 1))])
    expected = {key: lattice for key, lattice in node.backend.data.items()}
    node.close()

    recovered = open_node(data_dir, compact_bytes=2_000)
    try:
        assert recovered.backend.data == expected
        assert recovered.backend.data["k0"].value == b"after-compaction"
        assert recovered.backend.data["k39"].value == b"v199"
        assert recovered.backend.data["k3"].tombstone, "deletes survive compaction"
        assert "k3" not in recovered.live_keys()
        assert len(recovered.live_keys()) == 40
    finally:
        recovered.close()


def test_recovery_after_repeated_compactions(data_dir):
    node = open_node(data_dir, compact_bytes=500)
    for round_ in range(5):
        for i in range(30):
            node.handle_batch([PutRequest(i, f"k{i}", lww(f"r{round_}".encode(), round_ * 100 + i + 1))])
        node.maintain()
    node.close()
    recovered = open_node(data_dir, compact_bytes=500)
    try:
        assert {k: v.value for k, v in recovered.backend.data.items()} == {f"k{i}": b"r4" for i in range(30)}
    finally:
        recovered.close()


def test_stats_keys_and_bytes_follow_writes_overwrites_deletes_and_recovery(data_dir: Path, node: StoreNode) -> None:
    put(node, "a", lww(b"12345", 1))
    put(node, "b", lww(b"xy", 1))
    put(node, "a", lww(b"1234567", 2))  # replaces 5 bytes with 7
    put(node, "b", lww(b"old", 0))  # loses by LWW order: nothing changes
    assert (node.stats()["keys"], node.stats()["bytes"]) == (2, 9)
    assert isinstance(one(node, DeleteRequest(1, "a", 3, "w")), Ack)
    assert (node.stats()["keys"], node.stats()["bytes"]) == (1, 2)
    put(node, "a", lww(b"back", 4))  # newer than the tombstone: live again
    assert (node.stats()["keys"], node.stats()["bytes"]) == (2, 6)
    node.close()
    reopened = open_node(data_dir)
    try:
        assert (reopened.stats()["keys"], reopened.stats()["bytes"]) == (2, 6)
    finally:
        reopened.close()


def test_a_chain_of_triggered_calls_stops_at_its_depth_limit():
    from cbctl.runtime.lattices import LWWLattice
    from cbctl.runtime.store.triggers import PREFIX, StoreTriggers
    from cbctl.runtime.wire.messages import TRIGGER_DEPTH_EXTRA, unpack
    from cbctl.runtime.wire.serialization import encode

    triggers = StoreTriggers(max_depth=3)
    triggers.on_write(PREFIX + "t", LWWLattice(1, "w", encode({"name": "t", "prefix": "p/", "function": "f"})))
    value = LWWLattice(2, "w", encode(1))
    for depth in range(3):  # a client's put (0), then puts by calls 1 and 2 of the chain
        triggers.on_write("p/k", value, depth)
        (frame,) = triggers.take_due()
        assert unpack(frame).extras == {TRIGGER_DEPTH_EXTRA: depth + 1}
    triggers.on_write("p/k", value, 3)  # by call 3: the limit
    assert triggers.take_due() == []
    stats = triggers.stats()
    assert stats["trigger_depth_stops"] == 1 and stats["triggered_calls"] == 3
    assert "--max-trigger-depth 3" in stats["trigger_stats"]["t"]["last_error"]
