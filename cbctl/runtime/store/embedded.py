"""The embedded store backend: every key's lattice in a dict in the store process, each write appended to a
write-ahead log (``wal.py``) on ``commit``, the whole map compacted into a snapshot when the log grows, and
the dict rebuilt from snapshot + log at start.

A large last-writer-wins value (one that came as frames of its own, ``wire/frames.py``) is kept as the frames it
came in, and logged from them: its record is ``RECORD_IN_PARTS`` + u32 header length + a msgpack header ``[key,
lattice]`` whose value is the parts' lengths (ext ``EXT_PART_SIZES``), then the parts one after another. A
replayed one is kept as views of its record, in parts again, so it is sent on as frames with no copy either.
"""

from __future__ import annotations

import json
import logging
import struct
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
from cbctl.runtime.wire.frames import Frames

#: First byte of a record whose value is in parts (msgpack never begins anything with 0xc1, so older records,
#: plain msgpack, are told apart by it).
RECORD_IN_PARTS = b"\xc1"
#: The header's ext type standing for the value in parts: msgpack of the parts' lengths.
EXT_PART_SIZES = 1
_HEADER_LENGTH = struct.Struct("<I")

log = logging.getLogger(__name__)


class EmbeddedBackend(StoreBackend):
    def __init__(self, data_dir: Path, durability: str = "batch", compact_bytes: int = WAL_COMPACT_BYTES,
                 salvage: bool = False) -> None:
        self.data: dict[str, Lattice] = {}
        # kept up to date on every merge so stats (polled by `cbctl top` every second) cost O(1), not O(keys)
        self.live_keys_count = 0
        self.live_bytes = 0
        self.pending: list[bytes | list] = []  # log records of the writes merged since the last commit
        self.wal = WriteAheadLog(data_dir, durability=durability, batch_interval_s=WAL_BATCH_INTERVAL_S,
                                 compact_threshold_bytes=compact_bytes, salvage=salvage, background_sync=True)
        for record in self.wal.replay():
            key, wire = _from_record(record)
            self._apply(key, lattice_from_wire(wire))
        if self.wal.salvaged:  # `cbctl up --salvage` shows it to the user
            report = Path(data_dir) / cluster.SALVAGE_REPORT
            report.write_text(json.dumps({"time": time.time(), "files": self.wal.salvaged}, indent=2))
        log.info("recovered %d keys from %s", len(self.data), data_dir)

    def get(self, key: str) -> Lattice | None:
        return self.data.get(key)

    def merge(self, key: str, lattice: Lattice) -> Lattice:
        merged = self._apply(key, lattice)
        self.pending.append(_record(key, lattice))
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
            self.wal.compact(_record(k, v) for k, v in self.data.items())
            log.info("compacted %d keys in %.1f ms", len(self.data), (time.perf_counter() - started) * 1e3)

    def close(self) -> None:
        self.commit()
        self.wal.close()


def _is_tombstone(lattice: Lattice) -> bool:
    return isinstance(lattice, LWWLattice) and lattice.tombstone


def _record(key: str, lattice: Lattice) -> bytes | list:
    """The log record of a write: msgpack ``[key, wire]``, or for a value in parts the parts themselves behind
    a header (see the module docstring), so it is written from the frames it came in."""
    value = getattr(lattice, "value", None)
    if type(value) is not Frames:
        return msgpack.packb([key, lattice.to_wire()])
    sizes = [memoryview(part).nbytes for part in value.parts]
    wire = lattice.to_wire()
    wire[wire.index(value)] = msgpack.ExtType(EXT_PART_SIZES, msgpack.packb(sizes))
    header = msgpack.packb([key, wire])
    return [RECORD_IN_PARTS + _HEADER_LENGTH.pack(len(header)) + header, *value.parts]


def _from_record(record: bytes) -> tuple[str, list[Any]]:
    """``[key, wire]`` of a log record; a value in parts comes back as views of the record."""
    if record[:1] != RECORD_IN_PARTS:
        key, wire = msgpack.unpackb(record, raw=False)
        return key, wire
    view = memoryview(record)
    (length,) = _HEADER_LENGTH.unpack_from(view, 1)
    offset = 1 + _HEADER_LENGTH.size + length

    def parts(code: int, data: bytes) -> Any:
        nonlocal offset
        if code != EXT_PART_SIZES:
            return msgpack.ExtType(code, data)
        views = []
        for size in msgpack.unpackb(data):
            views.append(view[offset:offset + size])
            offset += size
        return Frames(views)

    key, wire = msgpack.unpackb(view[1 + _HEADER_LENGTH.size:1 + _HEADER_LENGTH.size + length], ext_hook=parts,
                                raw=False)
    if offset != len(record):
        raise ValueError(f"a log record of key {key!r:.60} holds {len(record) - offset} bytes past its value's parts")
    return key, wire


def _size(lattice: Lattice) -> int:
    value = lattice.reveal()
    if type(value) is Frames:
        return len(value)
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, list):
        return sum(len(v) for v in value if isinstance(v, (bytes, str)))
    return 8
