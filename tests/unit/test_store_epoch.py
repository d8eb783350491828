"""How an executor cache notices a restarted store: the store's epoch and subscription bookkeeping, and the
cache's reaction to a new epoch (the probe's sockets are exercised by tests/integration/test_recovery.py)."""

from __future__ import annotations

from pathlib import Path

import zmq

from cbctl.runtime.executor.cache import CachedStore
from cbctl.runtime.lattices import LWWLattice
from cbctl.runtime.store.embedded import EmbeddedBackend
from cbctl.runtime.store.node import StoreNode
from cbctl.runtime.store_client import StoreClient
from cbctl.runtime.wire.messages import Ack, SubscribeRequest


def subscribe(node: StoreNode, address: str, keys: list[str], unsubscribe: bool = False) -> None:
    replies, _ = node.handle_batch([SubscribeRequest(1, "e", address, keys, unsubscribe)])
    assert isinstance(replies[0], Ack)


def test_a_restarted_store_has_a_new_epoch_and_no_subscriptions(tmp_path: Path):
    node = StoreNode(EmbeddedBackend(tmp_path))
    subscribe(node, "ipc://a", ["k"])
    epoch = node.stats()["epoch"]
    assert node.stats()["epoch"] == epoch and node.stats()["subscriptions"] == 1
    node.close()
    restarted = StoreNode(EmbeddedBackend(tmp_path))
    try:
        assert restarted.stats()["epoch"] != epoch
        assert restarted.stats()["subscriptions"] == 0
    finally:
        restarted.close()


def test_the_subscription_count_follows_subscribes_and_unsubscribes_without_leaving_empty_sets(tmp_path: Path):
    node = StoreNode(EmbeddedBackend(tmp_path))
    try:
        subscribe(node, "ipc://a", ["k", "j"])
        subscribe(node, "ipc://a", ["k"])  # again: idempotent
        subscribe(node, "ipc://b", ["k"])
        assert node.stats()["subscriptions"] == 3
        subscribe(node, "ipc://c", ["k", "never"], unsubscribe=True)  # not subscribed: nothing changes
        assert node.stats()["subscriptions"] == 3
        subscribe(node, "ipc://a", ["k", "j"], unsubscribe=True)
        subscribe(node, "ipc://b", ["k"], unsubscribe=True)
        assert node.stats()["subscriptions"] == 0
        assert node.subscribers == {}, "a key nobody caches keeps no entry"
    finally:
        node.close()


def cached_store() -> CachedStore:
    # the client is never asked anything here: on_store_epoch is bookkeeping only
    client = StoreClient(zmq.Context.instance(), "ipc:///nonexistent/store", writer_id="test")
    return CachedStore(client, "executor-0", "ipc://executor-0", 1 << 20)


def test_a_new_store_epoch_drops_the_cache_and_pending_unsubscriptions():
    cached = cached_store()
    assert cached.on_store_epoch("one") is False  # first epoch, nothing held: nothing to drop
    cached.cache.insert("k", LWWLattice(1, "w", b"v"))
    cached._evicted(["old"])
    assert cached.on_store_epoch("one") is False and "k" in cached.cache
    assert cached.on_store_epoch("two") is True
    assert len(cached.cache) == 0 and cached.cache.bytes == 0 and not cached._unsubscribe
    assert cached.metrics()["store_restarts_seen"] == 1


def test_keys_cached_before_the_first_epoch_is_known_are_dropped():
    """They may have been subscribed at a store that restarted before the first probe came back."""
    cached = cached_store()
    cached.cache.insert("k", LWWLattice(1, "w", b"v"))
    assert cached.on_store_epoch("one") is True and len(cached.cache) == 0
    assert cached.metrics()["store_restarts_seen"] == 0  # not a restart that was seen
