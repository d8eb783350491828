"""Ephemeral values: the store node's own in-memory table, beside the backend and never logged.

``cb.put(key, value, durable=False)`` (and ``Client.put(..., durable=False)``) lands here instead of in the
backend: no write-ahead log append, no fsync, never in a snapshot, and never in Redis when the backend is
Redis (the table lives in the node process that fronts it). Reads of the key from any executor or client are
served from here by the same ``GetRequest`` as durable keys, so ``cb.get`` and ``Ref`` work unchanged.

Why the store node and not the writer's executor: the writer's executor runs one thread of user code, so it
could not answer a reader while its next call runs; the store node always can, its death is already handled
(the supervisor restarts it, readers retry across the restart), and it sees every put, which the triggers need.
The cost is the same two transfers of the value (writer -> store -> reader) that a durable put makes, minus
the log.

Lifetime (the README repeats it):
- A value lives ``ttl_s`` seconds from its latest put (default ``EPHEMERAL_TTL_S``); then reads find nothing.
- A store restart loses every ephemeral value (that is what never logged means): reads find nothing, and
  ``NoSuchKey``'s message says an ephemeral value may be why. A reader never sees a lost value as current,
  because executor caches never hold ephemeral values (``GetResponse.ephemeral``, ``KeyDropped``).
- The death of the writer's executor does not matter: it does not hold the value.
- A key is durable or ephemeral, not both: a put of the other kind to a key that holds a live value is refused
  (``InvalidArgument``), so an expiring value never uncovers an older durable one as if it were current.
- The table holds at most ``EPHEMERAL_MAX_BYTES``; a put past it fails with ``StoreFull`` (nothing is evicted
  before its TTL).

Pure bookkeeping with an injectable clock: the node calls it from its one thread.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cbctl.errors import InvalidArgument, StoreFull
from cbctl.runtime.defaults import EPHEMERAL_MAX_BYTES
from cbctl.runtime.lattices import Lattice, LWWLattice
from cbctl.runtime.wire.limits import check_ttl

#: Bytes counted per entry on top of its key and value (the dict slot, the entry, the heap item).
ENTRY_OVERHEAD_BYTES = 200


@dataclass(slots=True)
class _Entry:
    lattice: LWWLattice
    expires_at: float
    size: int


class EphemeralTable:
    """Key -> (LWW lattice, expiry). Expired entries leave on ``expire`` (the node's timer) and are hidden
    from ``get`` and ``scan`` before that."""

    def __init__(self, max_bytes: int = EPHEMERAL_MAX_BYTES, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.entries: dict[str, _Entry] = {}
        self.bytes = 0
        self._expiries: list[tuple[float, str]] = []  # (expires_at, key), stale items skipped on pop
        self.counters = {"ephemeral_puts": 0, "ephemeral_expired": 0}

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, key: str, lattice: Lattice, ttl_s: float | None) -> LWWLattice:
        """Merge ``lattice`` into the key's value and restart its lifetime; returns the merged value."""
        if not isinstance(lattice, LWWLattice) or lattice.tombstone:
            raise InvalidArgument(f"an ephemeral value for {key!r} must be a last-writer-wins value")
        ttl = check_ttl(ttl_s or None)  # 0 on the wire: the default
        now = self.clock()
        entry = self.entries.get(key)
        if entry is not None and entry.expires_at <= now:
            self._remove(key)
            entry = None
        merged = lattice if entry is None else entry.lattice.merge(lattice)
        assert isinstance(merged, LWWLattice)
        size = len(key) + len(merged.value or b"") + ENTRY_OVERHEAD_BYTES
        grows = size - (entry.size if entry is not None else 0)
        if self.bytes + grows > self.max_bytes:
            raise StoreFull(f"ephemeral value {key!r} ({size} bytes) would take the store's ephemeral memory past "
                            f"{self.max_bytes >> 20} MiB ({self.bytes} bytes held in {len(self.entries)} keys): "
                            "wait for earlier values to expire, give them a shorter ttl, or put this one durably")
        self.bytes += grows
        expires_at = now + ttl
        if entry is None:
            self.entries[key] = _Entry(merged, expires_at, size)
        else:
            entry.lattice, entry.expires_at, entry.size = merged, expires_at, size
        heapq.heappush(self._expiries, (expires_at, key))
        self.counters["ephemeral_puts"] += 1
        return merged

    def get(self, key: str) -> LWWLattice | None:
        entry = self.entries.get(key)
        if entry is None or entry.expires_at <= self.clock():
            return None
        return entry.lattice

    def delete(self, key: str) -> bool:
        """Drop the key's value now; returns whether it held one."""
        if key not in self.entries:
            return False
        self._remove(key)
        return True

    def scan(self, prefix: str = "") -> Iterator[tuple[str, LWWLattice]]:
        now = self.clock()
        for key, entry in self.entries.items():
            if entry.expires_at > now and key.startswith(prefix):
                yield key, entry.lattice

    def time_until_due(self) -> float | None:
        """Seconds until the next value expires (None when the table is empty)."""
        return max(0.0, self._expiries[0][0] - self.clock()) if self._expiries else None

    def expire(self) -> list[str]:
        """Drop the values whose lifetime has passed; returns their keys."""
        now = self.clock()
        gone = []
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, key = heapq.heappop(self._expiries)
            entry = self.entries.get(key)
            if entry is not None and entry.expires_at == expires_at:  # not put again since this item was pushed
                self._remove(key)
                self.counters["ephemeral_expired"] += 1
                gone.append(key)
        return gone

    def stats(self) -> dict[str, Any]:
        return {"ephemeral_keys": len(self.entries), "ephemeral_bytes": self.bytes, **self.counters}

    def _remove(self, key: str) -> None:
        entry = self.entries.pop(key)
        self.bytes -= entry.size
