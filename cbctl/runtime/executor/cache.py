"""The executor's cache of store values: Cloudburst's co-located cache, kept fresh by the store.

``ExecutorCache`` is the pure part: key -> lattice (or cached absence), least recently used first out, bounded
by an estimate of the bytes it holds. ``CachedStore`` puts it in front of a ``StoreClient``:

- a read that hits returns the cached lattice without touching the store;
- a large value (one that travels as frames of its own) is not pushed: a write of one makes the store send
  ``KeyDropped`` to the key's subscribers instead, and the next read here fetches it (only readers pay for it);
- a miss subscribes to the key *first* and then fetches it (one round trip: the store applies the two
  requests in order), so no write can fall between the fetch and the subscription: every merge after the
  subscription is pushed (``KeyUpdate``) and merged into the cache;
- a write goes through: the store acknowledges it (it is in the log) before ``write`` returns, then it is
  merged into the cached copy if the key is held (a key not held is not cached on write: the write alone
  would not be the key's whole value);
- evicted keys are unsubscribed in one batched request on the executor's timer, not on the read that evicted
  them (a push for a key no longer held is ignored and its key unsubscribed; a key fetched again is
  subscribed again and taken off the list);
- a cached copy that fails a session's freshness check (a push it needed is missing) is refetched, and its
  key subscribed again, which heals a subscription the store lost in a restart;
- a restarted store knows no subscriptions (they live in its memory), so nothing would ever be pushed to
  the copies cached before: once per status interval the executor asks the store for its epoch (a random id
  drawn at start, in its O(1) stats reply; ``StoreEpochProbe``), and on a new one drops the whole cache, so
  every key is fetched and subscribed again on its next read. The probe never waits (its answer is read at
  the next interval), so a write made after a restart can be missed by a cache for at most about two status
  intervals after the new store is up, never longer.

Used from the executor's one thread only.
"""

from __future__ import annotations

import collections
import itertools
import logging
import mmap
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from cbctl.errors import InvalidArgument, ProtocolError
from cbctl.runtime.lattices import CausalLattice, Lattice, LWWLattice, lattice_from_wire
from cbctl.runtime.process import drain, new_socket
from cbctl.runtime.store_client import StoreClient
from cbctl.runtime.wire import auth
from cbctl.runtime.wire.frames import Frames
from cbctl.runtime.wire.messages import StoreStatsRequest, StoreStatsResponse, unpack

log = logging.getLogger(__name__)

#: Bytes charged per cached key on top of its value: the key, the entry and the ordered-dict node it lives
#: in. An estimate (CPython's real overhead for a small entry is 150-250 bytes); it keeps a cache of many
#: tiny values bounded too.
ENTRY_OVERHEAD_BYTES = 200


def lattice_size(lattice: Lattice | None) -> int:
    """Estimated bytes a cached lattice holds: its values plus a fixed cost per clock entry.

    Exact sizes would need a serialisation per insert; this costs nothing for the common LWW value."""
    if lattice is None:
        return 0
    if type(lattice) is LWWLattice:
        return len(lattice.value or b"") + len(lattice.writer) + 32
    if type(lattice) is CausalLattice:
        versions = lattice._state  # the kept versions as they are, without rebuilding merged views
        total = 0
        for clock, (values, deps) in versions.items():
            total += sum(len(v) for v in values) + 32 * (len(clock.clock) + len(deps.entries) + 1)
        return total
    return len(msgpack.packb(lattice.to_wire()))


def held(lattice: Lattice | None) -> Lattice | None:
    """``lattice`` as the cache holds it: a large value's received frames (``zmq.Frame``, which a reader may
    decode into arrays over their memory, uncopied: ``serialization.decode``) as ``memoryview``s of them, which
    decode into copies, so a function changing what it read never changes the cache's copy. A lattice read and
    not held (too large for the cache, ephemeral, caching off) keeps its frames: its reader may take them."""
    if type(lattice) is not LWWLattice or type(lattice.value) is not Frames:
        return lattice
    parts = lattice.value.parts
    if not any(type(part) is zmq.Frame or type(part) is mmap.mmap for part in parts):
        return lattice
    return LWWLattice(lattice.timestamp, lattice.writer, Frames([
        part.buffer if type(part) is zmq.Frame else memoryview(part) if type(part) is mmap.mmap else part
        for part in parts]))


@dataclass(slots=True)
class CacheEntry:
    lattice: Lattice | None  # None: the store holds nothing under the key (absence is cached as well)
    size: int


class ExecutorCache:
    """Key -> lattice with LRU eviction by estimated bytes (``lattice_size`` + ``ENTRY_OVERHEAD_BYTES``).

    Invariant: after every ``insert``/``update``, ``bytes <= capacity_bytes``. An entry that alone is larger
    than the capacity is not kept (it comes back in the evicted list at once)."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise InvalidArgument(f"cache capacity {capacity_bytes} bytes is negative: use 0 (no cache) or more")
        self.capacity_bytes = capacity_bytes
        self._entries: collections.OrderedDict[str, CacheEntry] = collections.OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` (now the most recently used), or None when the key is not held."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def insert(self, key: str, lattice: Lattice | None) -> list[str]:
        """Hold ``lattice`` under ``key`` (merged with what is held), most recently used; return the keys
        evicted to make room (possibly ``key`` itself, if it alone exceeds the capacity)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return self._store(key, entry, lattice)

    def update(self, key: str, lattice: Lattice) -> tuple[bool, list[str]]:
        """Merge a pushed ``lattice`` into a held key without making it recently used (a push is not a use).
        Returns (held, evicted keys); a key not held is ignored."""
        entry = self._entries.get(key)
        if entry is None:
            return False, []
        return True, self._store(key, entry, lattice)

    def discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def recent_keys(self, limit: int | None = None) -> list[str]:
        """Held keys, most recently used first, at most ``limit`` of them."""
        keys = []
        for key in reversed(self._entries):
            if limit is not None and len(keys) >= limit:
                break
            keys.append(key)
        return keys

    def _store(self, key: str, entry: CacheEntry | None, incoming: Lattice | None) -> list[str]:
        incoming = held(incoming)
        if entry is None:
            merged = incoming
        elif entry.lattice is None or incoming is None:
            merged = entry.lattice if incoming is None else incoming
        else:
            try:
                merged = entry.lattice.merge(incoming)
            except TypeError:  # the key changed kind (deleted and rewritten): the store's value is the truth
                merged = incoming
        size = lattice_size(merged) + len(key) + ENTRY_OVERHEAD_BYTES
        if entry is None:
            entry = self._entries[key] = CacheEntry(merged, size)
            self.bytes += size
        else:
            self.bytes += size - entry.size
            entry.lattice, entry.size = merged, size
        evicted = []
        while self.bytes > self.capacity_bytes and self._entries:
            old_key, old = self._entries.popitem(last=False)
            self.bytes -= old.size
            self.evictions += 1
            evicted.append(old_key)
        return evicted


class CachedStore:
    """The executor's store access: an ``ExecutorCache`` in front of a ``StoreClient``, subscribed to the
    keys it holds. ``read`` serves hits locally; ``fetch`` always asks the store."""

    def __init__(self, store: StoreClient, subscriber: str, address: str, capacity_bytes: int) -> None:
        self.client = store
        self.subscriber = subscriber
        self.address = address  # where the store pushes KeyUpdates: the executor's PULL socket
        self.cache = ExecutorCache(capacity_bytes)
        self._unsubscribe: set[str] = set()  # evicted, still subscribed until the next flush
        self.hits = 0
        self.misses = 0
        self.stale_refetches = 0
        self.pushes_applied = 0
        self.pushes_ignored = 0
        self.ephemeral_reads = 0  # reads of ephemeral values: always from the store
        self.store_epoch: str | None = None  # the store run the subscriptions were made with (None: unknown)
        self.store_restarts_seen = 0

    def read(self, key: str, fresh: Any = None) -> Lattice | None:
        """The key's lattice (None: no value), from the cache when held; ``fresh`` is a predicate a held
        lattice must pass to be served (a session's read-your-writes check), else the store is asked."""
        entry = self.cache.get(key)
        if entry is not None:
            if fresh is None or fresh(entry.lattice):
                self.hits += 1
                return entry.lattice
            # a push this session needed has not come: late, or the subscription was lost (a store restart
            # forgets them); subscribing again is idempotent and heals the latter
            self.stale_refetches += 1
            return self.fetch(key, resubscribe=True)
        return self.fetch(key)

    def fetch(self, key: str, resubscribe: bool = False) -> Lattice | None:
        """Ask the store for ``key`` (subscribing first when the key is not held, or ``resubscribe``) and
        cache the answer."""
        self.misses += 1
        if not self.cache.capacity_bytes:  # caching is off (--cache-mb 0): no subscription to keep
            return self.client.get_lattices([key])[0]
        if key in self.cache and not resubscribe:
            (lattice,), ephemeral = self.client.read([key])
        else:
            # subscribing is idempotent, and this key must not be unsubscribed by the next flush any more
            self._unsubscribe.discard(key)
            (lattice,), ephemeral = self.client.subscribe_and_read(self.subscriber, self.address, [key])
        if ephemeral:  # never cached (the store did not subscribe us): a lost value must not be served from here
            self.cache.discard(key)
            self.ephemeral_reads += 1
            return lattice
        self._evicted(self.cache.insert(key, lattice))
        entry = self.cache.get(key)
        return lattice if entry is None else entry.lattice

    def write(self, key: str, lattice: Lattice) -> tuple[Lattice, Lattice, bool]:
        """Write through: returns once the store acknowledged the merge, with the version written (a last-
        writer-wins one restamped if the key held a later one: ``StoreClient.put_lww``), what the cache now holds
        for the key (the write merged into it, or the written version when the key is not held), and whether
        the write won."""
        won = True
        try:
            if type(lattice) is LWWLattice:
                lattice, won = self.client.put_lww(key, lattice)
            else:
                self.client.put_lattice(key, lattice)
        except InvalidArgument as exc:
            if "ephemeral value" in str(exc):  # the store says why itself (a key is durable or ephemeral)
                raise
            raise InvalidArgument(
                f"could not write {key!r}: {exc} (a key keeps the kind of value it was first written with: "
                "lww and repeatable_read calls write last-writer-wins values, causal calls causal ones; "
                "use another key, or delete it first)") from None
        if key not in self.cache:
            return lattice, lattice, won
        if type(getattr(lattice, "value", None)) is Frames:
            # a large value written in parts is views of the function's own arrays, which it may change once
            # this returns: not held; the next read fetches the store's copy (and the key's push is ignored)
            self.cache.discard(key)
            return lattice, lattice, won
        self._evicted(self.cache.insert(key, lattice))
        entry = self.cache.get(key)
        return lattice, lattice if entry is None else entry.lattice, won

    def on_dropped(self, key: str) -> None:
        """A ``KeyDropped`` from the store: the key became ephemeral, or took a large value (which the store does
        not push); forget it (the store has unsubscribed)."""
        self.cache.discard(key)

    def on_push(self, key: str, wire: list[Any]) -> None:
        """A ``KeyUpdate`` from the store: merge it into the held copy (ignored when the key is not held)."""
        if key not in self.cache:
            # evicted and not unsubscribed yet, or subscribed by an earlier run of this executor (a restart
            # keeps the address): either way, stop the pushes on the next flush
            self.pushes_ignored += 1
            self._unsubscribe.add(key)
            return
        try:
            lattice = lattice_from_wire(wire)
        except ValueError as exc:
            log.warning("dropped a malformed push for %r: %s", key, exc)
            return
        held, evicted = self.cache.update(key, lattice)
        self.pushes_applied += held
        self._evicted(evicted)

    def flush(self) -> None:
        """Unsubscribe the keys evicted since the last flush (one request); called from the timer."""
        if not self._unsubscribe:
            return
        keys = sorted(self._unsubscribe)
        self._unsubscribe.clear()
        try:
            self.client.subscribe(self.subscriber, self.address, keys, unsubscribe=True)
        except Exception:
            self._unsubscribe.update(k for k in keys if k not in self.cache)  # try again on the next flush
            raise

    def on_store_epoch(self, epoch: str) -> bool:
        """The store's epoch, as a probe just read it; returns whether the cache was dropped.

        A new epoch is a restarted store, which pushes nothing for the keys held here: drop them all (and the
        pending unsubscriptions, which the new store does not have). With no epoch known yet, held keys may
        predate a restart nobody saw, so they go too (at most once, right after start)."""
        known, self.store_epoch = self.store_epoch, epoch
        if epoch == known or (known is None and not len(self.cache)):
            return False
        if known is not None:
            self.store_restarts_seen += 1
            log.info("the store restarted (epoch %s, was %s): dropping %d cached keys", epoch, known,
                     len(self.cache))
        self.cache.clear()
        self._unsubscribe.clear()
        return True

    def metrics(self) -> dict[str, Any]:
        return {
            "hits": self.hits, "misses": self.misses, "stale_refetches": self.stale_refetches,
            "keys": len(self.cache), "bytes": self.cache.bytes, "capacity_bytes": self.cache.capacity_bytes,
            "evictions": self.cache.evictions, "pushes_applied": self.pushes_applied,
            "pushes_ignored": self.pushes_ignored, "store_requests": self.client.requests,
            "store_restarts_seen": self.store_restarts_seen, "ephemeral_reads": self.ephemeral_reads,
        }

    def _evicted(self, keys: list[str]) -> None:
        self._unsubscribe.update(keys)


class StoreEpochProbe:
    """Asks the store for its epoch on a DEALER of its own, so a probe never blocks for long and a dead store
    costs nothing but an unanswered request: ``probe`` reads any late answer to an earlier probe, sends a new
    one and waits at most ``wait_s`` for it. Not the ``StoreClient``'s socket: that one retries for seconds
    and counts requests (tests count a cache hit's store requests with it)."""

    def __init__(self, context: zmq.Context, address: str) -> None:
        self.sock = new_socket(context, zmq.DEALER)
        auth.connect(self.sock, address)
        self._ids = itertools.count(1)

    def probe(self, wait_s: float) -> str | None:
        """The newest epoch the store reported (None if none came back yet)."""
        epoch = self._read()
        try:
            self.sock.send(StoreStatsRequest(next(self._ids)).pack(), zmq.NOBLOCK)
        except zmq.Again:  # the store has not read our earlier probes for a long while: it is down
            return epoch
        if self.sock.poll(max(0, int(wait_s * 1000))):
            epoch = self._read() or epoch
        return epoch

    def _read(self) -> str | None:
        epoch = None
        for parts in drain(self.sock):
            try:
                reply = unpack(parts[-1])
            except ProtocolError:
                continue
            if isinstance(reply, StoreStatsResponse) and isinstance(reply.stats.get("epoch"), str):
                epoch = reply.stats["epoch"]
        return epoch

    def close(self) -> None:
        self.sock.close()
