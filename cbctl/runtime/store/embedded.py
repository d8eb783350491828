"""The embedded store backend: every key's lattice in a dict in the store process, each write appended to a
write-ahead log (``wal.py``) on ``commit``, the whole map compacted into a snapshot when the log grows, and
the dict rebuilt from snapshot + log at start.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from cbctl.runtime import cluster
from cbctl.runtime.defaults import WAL_BATCH_INTERVAL_S, WAL_COMPACT_BYTES
from cbctl.runtime.lattices import Lattice, LWWLattice, lattice_from_wire
from cbctl.runtime.store.backend import StoreBackend
from cbctl.runtime.store.wal import WriteAheadLog

log = logging.getLogger(__name__)


class EmbeddedBackend(StoreBackend):
    def __init__(self, data_dir: Path, durability: str = "batch", compact_bytes: int = WAL_COMPACT_BYTES,
                 salvage: bool = False) -> None:
        self.data: dict[str, Lattice] = {}
        # kept up to date on every merge so stats (polled by `cbctl top` every second) cost O(1), not O(keys)
        self.live_keys_count = 0
        self.live_bytes = 0
        self.pending: list[bytes] = []  # log records of the writes merged since the last commit
        self.wal = WriteAheadLog(data_dir, durability=durability, batch_interval_s=WAL_BATCH_INTERVAL_S,
                                 compact_threshold_bytes=compact_bytes, salvage=salvage)
        for record in self.wal.replay():
            key, wire = msgpack.unpackb(record, raw=False)
            self._apply(key, lattice_from_wire(wire))
        if self.wal.salvaged:  # `cbctl up --salvage` shows it to the user
            report = Path(data_dir) / cluster.SALVAGE_REPORT
            report.write_text(json.dumps({"time": time.time(), "files": self.wal.salvaged}, indent=2))
        log.info("recovered %d keys from %s", len(self.data), data_dir)

    def get(self, key: str) -> Lattice | None:
        return self.data.get(key)

    def merge(self, key: str, lattice: Lattice) -> Lattice:
        merged = self._apply(key, lattice)
        self.pending.append(msgpack.packb([key, lattice.to_wire()]))
        return merged

    def _apply(self, key: str, incoming: Lattice) -> Lattice:
        current = self.data.get(key)
        merged = incoming if current is None else current.merge(incoming)
        self.data[key] = merged
        if current is not merged:
            for lattice, sign in ((current, -1), (merged, 1)):
                if lattice is not None and not _is_tombstone(lattice):
                    self.live_keys_count += sign
                    self.live_bytes += sign * _size(lattice)
        return merged

    def commit(self) -> None:
        if self.pending:
            self.wal.append_many(self.pending)  # one append (and one fsync with durability "always")
            self.pending = []

    def scan(self, prefix: str = "") -> Iterator[tuple[str, Lattice]]:
        return ((k, v) for k, v in self.data.items() if k.startswith(prefix) and not _is_tombstone(v))

    def stats(self) -> dict[str, Any]:
        return {"keys": self.live_keys_count, "bytes": self.live_bytes, "log_bytes": self.wal.log_bytes,
                "snapshot_bytes": self.wal.snapshot_bytes,
                "durability": self.wal.durability,  # `cbctl up --durability`
                "log_syncs": self.wal.syncs}  # fsyncs of the log since the store started

    def time_until_due(self) -> float | None:
        return self.wal.time_until_sync()

    def maintain(self) -> None:
        """The batch fsync, and compaction when the log has grown past its threshold."""
        self.wal.sync_if_due()
        if self.wal.needs_compaction():
            started = time.perf_counter()
            self.wal.compact(msgpack.packb([k, v.to_wire()]) for k, v in self.data.items())
            log.info("compacted %d keys in %.1f ms", len(self.data), (time.perf_counter() - started) * 1e3)

    def close(self) -> None:
        self.commit()
        self.wal.close()


def _is_tombstone(lattice: Lattice) -> bool:
    return isinstance(lattice, LWWLattice) and lattice.tombstone


def _size(lattice: Lattice) -> int:
    value = lattice.reveal()
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, list):
        return sum(len(v) for v in value if isinstance(v, (bytes, str)))
    return 8
