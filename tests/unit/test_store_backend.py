"""The store node's backend interface: the node works over any ``StoreBackend`` (here a plain dict, no log),
and the embedded backend keeps the durability contract (a write is in the log once ``commit`` returns)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from cbctl.runtime.lattices import Lattice, LWWLattice
from cbctl.runtime.store.backend import StoreBackend
from cbctl.runtime.store.embedded import EmbeddedBackend
from cbctl.runtime.store.node import StoreNode
from cbctl.runtime.trigger_records import PREFIX
from cbctl.runtime.wire.messages import (
    Ack,
    DeleteRequest,
    GetRequest,
    ListKeysRequest,
    PutRequest,
    StoreStatsRequest,
    SubscribeRequest,
)


class DictBackend(StoreBackend):
    """The smallest backend: what a second one must provide, and nothing more."""

    def __init__(self) -> None:
        self.data: dict[str, Lattice] = {}
        self.commits = 0

    def get(self, key: str) -> Lattice | None:
        return self.data.get(key)

    def merge(self, key: str, lattice: Lattice) -> Lattice:
        current = self.data.get(key)
        self.data[key] = merged = lattice if current is None else current.merge(lattice)
        return merged

    def commit(self) -> None:
        self.commits += 1

    def scan(self, prefix: str = "") -> Iterator[tuple[str, Lattice]]:
        return ((k, v) for k, v in self.data.items()
                if k.startswith(prefix) and not (isinstance(v, LWWLattice) and v.tombstone))

    def stats(self) -> dict[str, Any]:
        return {"keys": sum(1 for _ in self.scan()), "bytes": 0}

    def close(self) -> None:
        pass


def lww(value: bytes | None, timestamp: int) -> list:
    return LWWLattice(timestamp, "w", value).to_wire()


def test_the_node_serves_puts_gets_deletes_lists_and_pushes_over_another_backend():
    backend = DictBackend()
    node = StoreNode(backend)
    replies, pushes = node.handle_batch([SubscribeRequest(1, "e", "ipc://cache", ["a"]),
                                         PutRequest(2, "a", lww(b"1", 1)), PutRequest(3, "b", lww(b"2", 1)),
                                         PutRequest(4, "a", lww(b"old", 0))])
    assert all(isinstance(r, Ack) for r in replies) and backend.commits == 1  # one commit per batch
    assert [(address, update.key) for address, update in pushes] == [("ipc://cache", "a")]
    replies, pushes = node.handle_batch([GetRequest(5, ["a", "missing"]), DeleteRequest(6, "b", 2, "w"),
                                         ListKeysRequest(7, ""), StoreStatsRequest(8)])
    assert replies[0].lattices == [lww(b"1", 1), None]  # the newer write won the merge
    assert replies[2].keys == ["a"]  # b's tombstone hides it
    assert replies[3].stats["keys"] == 1 and replies[3].stats["deletes"] == 1
    assert pushes == []  # b has no subscriber; a did not change in this batch
    node.close()


def test_the_node_rebuilds_its_trigger_index_from_the_backend():
    backend = DictBackend()
    record = {"name": "t", "prefix": "in/", "function": "f", "created_ns": 0}
    backend.merge(PREFIX + "t", LWWLattice(1, "w", msgpack.packb(record)))
    node = StoreNode(backend)
    assert list(node.triggers.index) == ["t"]
    node.handle_batch([PutRequest(1, "in/x", lww(b"v", 1))])
    assert node.stats()["triggered_calls"] == 1


def test_embedded_writes_are_in_the_log_once_commit_returns(tmp_path: Path):
    first = EmbeddedBackend(tmp_path)
    first.merge("committed", LWWLattice(1, "w", b"c"))
    first.commit()
    first.merge("pending", LWWLattice(1, "w", b"p"))  # merged, not yet committed
    second = EmbeddedBackend(tmp_path)  # reads the directory as a restarted store would
    try:
        assert [k for k, _ in second.scan()] == ["committed"]
        assert first.get("pending") is not None and second.get("pending") is None
    finally:
        second.close()
        first.close()
