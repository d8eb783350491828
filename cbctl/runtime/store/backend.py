"""The interface between the store node and where its data lives.

The node (``node.py``) owns the protocol: requests, replies, subscriptions, triggers, counters. A backend owns
the data: a map from key to lattice in which every write is a merge (a delete is the merge of a tombstone).
The node calls a backend from its one thread only, so a backend needs no locks of its own.

Durability contract: ``merge`` may return before the write is durable; ``commit`` makes every write merged
since the last ``commit`` as durable as the backend promises, and the node acknowledges a write only after
the ``commit`` that follows it. The node calls ``commit`` once per batch of requests, so a backend can group
its work (one log append, one round trip) per batch.

The first backend is ``embedded.EmbeddedBackend`` (in-process dict, write-ahead log and snapshots on local
disk). A second one is one new module implementing this class, chosen in ``node.open_backend``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any

from cbctl.runtime.lattices import Lattice


class StoreBackend(abc.ABC):
    """Key -> lattice, every write a merge. Keys are non-empty strings (the node checks them)."""

    @abc.abstractmethod
    def get(self, key: str) -> Lattice | None:
        """The key's current lattice (a tombstone included), or None if it was never written."""

    @abc.abstractmethod
    def merge(self, key: str, lattice: Lattice) -> Lattice:
        """Merge ``lattice`` into the key's value and return the merged value (what gets and subscribers
        see from now on). Durable once the next ``commit`` returns."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the writes merged since the last commit durable (per the backend's durability setting)."""

    @abc.abstractmethod
    def scan(self, prefix: str = "") -> Iterator[tuple[str, Lattice]]:
        """The live (not deleted) keys starting with ``prefix`` and their values, in no particular order."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """At least ``keys`` (live keys) and ``bytes`` (their values' size), cheap enough to poll every
        second; a backend may add its own entries (shown by ``cbctl top`` and ``Client.store_stats``)."""

    def time_until_due(self) -> float | None:
        """Seconds until ``maintain`` has work to do (the node's loop sleeps at most that long), or None."""
        return None

    def maintain(self) -> None:  # noqa: B027 (optional: a backend without timer work keeps this)
        """Timer work (flushes, compaction), called from the node's loop between batches."""

    @abc.abstractmethod
    def close(self) -> None:
        """Make every merged write durable and release files and connections."""
