"""Timestamps for one writer's last-writer-wins versions: a hybrid logical clock, kept per key.

A version's timestamp is the wall clock in nanoseconds, except that a writer never issues one at or below a
timestamp it has already issued (its own writes stay in order when the wall clock steps back) or already seen
for that key (a store's ``Ack`` names the timestamp of a version that beat a write: one written by a machine
whose clock runs ahead, or injected far in the future). Without this, every later write of such a key loses
the merge while the writer is told it was stored. The keys seen are bounded (least recently seen forgotten
first): a forgotten key costs one more round trip on its next losing write, never a lost one.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from cbctl.runtime.defaults import WRITER_CLOCK_KEYS

#: The largest timestamp the wire carries (msgpack's unsigned 64-bit): a version stamped there cannot be
#: outstamped, only reported (a write that loses to it says so).
MAX_TIMESTAMP = 2**64 - 1


class WriterClock:
    """Thread-safe; one per writer (a ``StoreClient``)."""

    def __init__(self, max_keys: int = WRITER_CLOCK_KEYS, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._max_keys = max_keys
        self._last = 0  # the highest timestamp issued from the wall clock: this writer's own order
        self._seen: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._lock = threading.Lock()

    def stamp(self, key: str) -> int:
        """A timestamp above every one this writer issued, and above any it has seen for ``key``."""
        with self._lock:
            self._last = issued = max(self._clock_ns(), self._last + 1)
            if not self._seen:
                return issued
            floor = self._seen.get(key)
            if floor is None or issued > floor:
                return issued
            # the floor is the key's alone: one key written from the future must not drag this writer's stamps
            # for every other key there too; it rises with each stamp, so the key's next write is later still
            self._seen[key] = stamp = min(floor + 1, MAX_TIMESTAMP)
            return stamp

    def observe(self, key: str, timestamp: int) -> None:
        """Remember that a version of ``key`` stamped ``timestamp`` exists."""
        with self._lock:
            if timestamp > self._seen.get(key, 0):
                self._seen[key] = timestamp
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
