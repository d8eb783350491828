"""Write-ahead log and snapshots: the store node's durability layer, generic over opaque byte records.

The store appends each write here before acking it, replays everything once at start, and compacts the log
into a snapshot of its full state when the log grows past a threshold. Single writer; stdlib only.

On-disk format in ``directory`` (integers little-endian); frame = u32 length + u32 zlib.crc32 + payload:
  ``wal.log``       b"CBWAL001" + u64 generation, then frames appended one write at a time
  ``snapshot.bin``  b"CBSNP001" + u64 generation, then frames; installed atomically (tmp, fsync, rename)

Compaction installs snapshot g+1, then an empty log g+1. A crash between the two leaves log g beside snapshot
g+1, which already holds its records, so replay discards that log instead of applying them twice. Only the
log's tail can be torn (a crash mid-append) and it is cut off. Damage anywhere else (a bad frame followed by
intact ones: recovery scans past a bad frame for the next intact one to tell the two apart) raises
WalCorruptError naming the file, the offset and how many intact records follow, unless the log is opened with
``salvage=True``: then every intact record is kept, the damaged file is moved aside (``NAME.damaged-TIME``), a
clean one is written in its place, and ``salvaged`` says what was dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

DURABILITY_MODES = ("always", "batch", "none")
_FRAME = struct.Struct("<II")  # payload length, crc32(payload)
_HEADER = struct.Struct("<8sQ")  # magic, generation
_LOG_MAGIC = b"CBWAL001"
_SNAP_MAGIC = b"CBSNP001"

# Recovery needs only the data and the file size, so fdatasync (skipping timestamps) suffices where it exists.
_datasync = getattr(os, "fdatasync", os.fsync)


class WalCorruptError(Exception):
    """A snapshot or a file header is damaged or inconsistent: replaying it would lose or invent records."""


def _frame(record: bytes | list) -> list:
    """A record's frame as the buffers to write one after another: its header, then the record, or the record's
    parts (a record in parts is written as their concatenation, never joined in memory: a large value's frames,
    as the store received them)."""
    if type(record) is bytes:
        return [_FRAME.pack(len(record), zlib.crc32(record)), record]
    parts = [memoryview(part).cast("B") for part in record]
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return [_FRAME.pack(sum(part.nbytes for part in parts), crc), *parts]


#: Buffers smaller than this are gathered into one ``bytes`` before a write (one syscall for a batch of small
#: records, as before records could come in parts); larger ones are written from their own memory.
_GATHER_BYTES = 64 << 10


def _write_all(fd: int, buffers: list) -> int:
    """Write ``buffers`` one after another to ``fd``; the bytes written."""
    written = 0
    small: list = []

    def write(data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:  # a regular file takes it all in one write; loop only for the odd short write
            view = view[os.write(fd, view):]

    for buffer in buffers:
        size = memoryview(buffer).nbytes
        written += size
        if size < _GATHER_BYTES:
            small.append(buffer)
            continue
        if small:
            write(b"".join(small))
            small = []
        write(buffer)
    if small:
        write(b"".join(small))
    return written


def _read_frames(f: BinaryIO, size: int) -> Generator[bytes, None, tuple[int, str | None]]:
    """Yield payloads from f's position to ``size``; return (offset reached, why it stopped early or None)."""
    offset = f.tell()
    while offset < size:
        if size - offset < _FRAME.size:
            return offset, "short header"
        length, crc = _FRAME.unpack(f.read(_FRAME.size))
        # Checked against the file size before reading, so a garbage length never allocates gigabytes.
        if length > size - offset - _FRAME.size:
            return offset, "short payload"
        payload = f.read(length)
        if zlib.crc32(payload) != crc:
            return offset, "crc mismatch"
        yield payload
        offset += _FRAME.size + length
    return offset, None


def _frame_at(data: bytes, offset: int) -> tuple[int, str | None]:
    """The end of the intact frame at ``offset`` of ``data``, or (offset, why it is not one)."""
    if len(data) - offset < _FRAME.size:
        return offset, "short header"
    length, crc = _FRAME.unpack_from(data, offset)
    start = offset + _FRAME.size
    if length > len(data) - start:
        return offset, "short payload"
    if zlib.crc32(memoryview(data)[start:start + length]) != crc:
        return offset, "crc mismatch"
    return start + length, None


def _resync(data: bytes, offset: int) -> int | None:
    """The offset of the first intact, non-empty frame after a bad one at ``offset``, or None if none follows
    (a torn tail). The frame after a bad payload is tried first (its header is usually intact), then every byte.
    Empty frames are skipped: a store record is never empty, and eight zero bytes would pass as one."""
    if len(data) - offset >= _FRAME.size:
        (length,) = struct.unpack_from("<I", data, offset)
        candidate = offset + _FRAME.size + length
        if candidate < len(data) and _nonempty_frame_at(data, candidate):
            return candidate
    for candidate in range(offset + 1, len(data) - _FRAME.size):
        if _nonempty_frame_at(data, candidate):
            return candidate
    return None


def _nonempty_frame_at(data: bytes, offset: int) -> bool:
    (length,) = struct.unpack_from("<I", data, offset)
    return 0 < length <= len(data) - offset - _FRAME.size and _frame_at(data, offset)[1] is None


@dataclass
class FileScan:
    """Every intact frame of a file and the damaged stretches between them (see ``_scan``)."""

    payloads: list[bytes] = field(default_factory=list)
    damaged: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, why), ends exclusive
    records_before_damage: int = 0  # intact records before the first damaged stretch

    @property
    def records_after_damage(self) -> int:
        """Intact records after the first damaged stretch: 0 when only the end is damaged (a torn tail)."""
        return len(self.payloads) - self.records_before_damage if self.damaged else 0


def _scan(data: bytes, offset: int) -> FileScan:
    """Read frames from ``offset`` to the end, scanning past each damaged stretch to the next intact frame."""
    scan = FileScan()
    while offset < len(data):
        end, problem = _frame_at(data, offset)
        if problem is None:
            scan.payloads.append(bytes(memoryview(data)[offset + _FRAME.size:end]))
            offset = end
            continue
        if not scan.damaged:
            scan.records_before_damage = len(scan.payloads)
        following = _resync(data, offset)
        scan.damaged.append((offset, len(data) if following is None else following, problem))
        if following is None:
            break
        offset = following
    return scan


def _read_header(path: Path, magic: bytes) -> int | None:
    """The generation in ``path``'s header, or None if there is no such file."""
    try:
        with open(path, "rb") as f:
            header = f.read(_HEADER.size)
    except FileNotFoundError:
        return None
    if len(header) < _HEADER.size or header[:8] != magic:
        raise WalCorruptError(f"{path} has a damaged header: restore it from a backup or move it aside")
    return _HEADER.unpack(header)[1]


def _install(path: Path, header: bytes, frames: Iterable[bytes | memoryview]) -> None:
    """Atomically replace ``path`` with header + frames: tmp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.writelines(frames)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # makes the rename itself durable
    finally:
        os.close(dir_fd)


class WriteAheadLog:
    """Append-only log of opaque records plus a snapshot; see the module docstring for the format."""

    def __init__(self, directory: Path, durability: str = "batch", batch_interval_s: float = 0.05,
                 compact_threshold_bytes: int = 64 * 1024 * 1024, *,
                 clock: Callable[[], float] = time.monotonic, salvage: bool = False,
                 background_sync: bool = False) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY_MODES)}; got {durability!r}")
        self._dir = Path(directory)
        self._durability = durability
        self._interval = batch_interval_s
        self._threshold = compact_threshold_bytes
        self._known_snapshot_size: int | None = None  # see _snapshot_size
        self._clock = clock
        self._salvage = salvage
        #: what recovery with ``salvage`` dropped: one report per damaged file it moved aside
        self.salvaged: list[dict] = []
        self._snap_path = self._dir / "snapshot.bin"
        self._log_path = self._dir / "wal.log"
        self._fd: int | None = None  # None once closed
        self._dirty = False
        self._last_sync = clock()
        self.syncs = 0  # fsyncs of appended records (not at close): what the durability mode decides
        # Batch mode's fsync on a thread of its own (``background_sync``): an fsync of a large value's record takes
        # tens of ms, which on the store's loop would stall every request behind it, and batch mode acknowledges
        # before the sync anyway. The lock is held while that thread syncs and while the log's fd is replaced.
        self._fd_lock = threading.Lock()
        self._sync_wanted = threading.Event()
        self._sync_error: OSError | None = None  # raised by the next sync_if_due: a log that cannot sync stops
        self._syncer: threading.Thread | None = None
        self._dir.mkdir(parents=True, exist_ok=True)
        # We are the only writer, so a tmp file is debris from a crash mid-install, never a live write.
        for path in (self._snap_path, self._log_path):
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)
        snap_gen = _read_header(self._snap_path, _SNAP_MAGIC) or 0
        log_gen = _read_header(self._log_path, _LOG_MAGIC)
        if log_gen is not None and log_gen > snap_gen:
            raise WalCorruptError(f"{self._log_path} is generation {log_gen} but {self._snap_path} is "
                                  f"{snap_gen} (missing or replaced?): records compacted into it are lost")
        if log_gen is None or log_gen < snap_gen:
            if log_gen is not None:
                log.warning("discarding %s: generation %d is already in snapshot generation %d",
                            self._log_path, log_gen, snap_gen)
            self._start_empty_log(snap_gen)
        else:
            self._open_log(log_gen)
            self._recovered = False  # the tail may be torn until replay (or the first append) checks it
        if background_sync and durability == "batch":
            self._syncer = threading.Thread(target=self._sync_in_background, name="wal-sync", daemon=True)
            self._syncer.start()

    def _sync_in_background(self) -> None:
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            with self._fd_lock:
                if self._fd is None:  # closed
                    return
                try:
                    _datasync(self._fd)
                    self.syncs += 1
                except OSError as exc:
                    self._sync_error = exc

    def _open_log(self, gen: int) -> None:
        fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND)  # unbuffered: os.write reaches the OS
        with self._fd_lock:  # not while the background sync uses the old one
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self._gen = fd, gen
        self._log_bytes = os.fstat(fd).st_size

    def _start_empty_log(self, gen: int) -> None:
        _install(self._log_path, _HEADER.pack(_LOG_MAGIC, gen), ())
        self._open_log(gen)
        self._dirty = False
        self._recovered = True

    def replay(self) -> Iterator[bytes]:
        """Yield the snapshot's records, then the log's, in the order they were written."""
        if self._snap_path.exists():
            yield from self._replay_file(self._snap_path, _SNAP_MAGIC)
        yield from self._replay_log()

    def _replay_log(self) -> Iterator[bytes]:
        self._log_bytes = yield from self._replay_file(self._log_path, _LOG_MAGIC)
        self._recovered = True

    def _replay_file(self, path: Path, magic: bytes) -> Generator[bytes, None, int]:
        """Yield ``path``'s records; return where its intact frames end. A torn log tail is cut off; any other
        damage raises ``WalCorruptError``, or with ``salvage`` is moved aside (see the module docstring)."""
        with open(path, "rb") as f:
            f.seek(_HEADER.size)
            size = os.fstat(f.fileno()).st_size
            end, problem = yield from _read_frames(f, size)
        if not problem:
            return end
        data = path.read_bytes()
        scan = _scan(data, end)  # from the first bad frame on: the records before it were yielded already
        following = scan.records_after_damage
        is_log = magic == _LOG_MAGIC
        if is_log and not following:
            # Normally a crash mid-append (never acked); cut it so new appends start on a frame boundary.
            log.warning("%s: dropping %d bytes of torn or corrupt tail (%s) at byte offset %d",
                        path, size - end, problem, end)
            assert self._fd is not None
            os.ftruncate(self._fd, end)
            _datasync(self._fd)
            return end
        if not self._salvage:
            what = (f"and {following} intact record(s) follow it" if following else
                    "at its end (snapshots are written whole, so this is no torn write)")
            raise WalCorruptError(
                f"{path} is damaged at byte offset {end} ({problem}), {what}: start the cluster with "
                "`cbctl up --salvage` to keep every intact record (the damaged file is moved aside and what was "
                f"dropped is reported), or restore {path.name} from a backup")
        yield from scan.payloads
        return self._salvage_file(path, magic, data)

    def _salvage_file(self, path: Path, magic: bytes, data: bytes) -> int:
        """Keep a copy of the damaged ``path`` beside it, and replace it with its intact frames only."""
        scan = _scan(data, _HEADER.size)
        moved = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        shutil.copyfile(path, moved)
        _install(path, data[:_HEADER.size], (b for p in scan.payloads for b in _frame(p)))
        self._known_snapshot_size = None
        dropped = sum(stop - start for start, stop, _ in scan.damaged)
        report = {"file": str(path), "moved_to": str(moved), "records_kept": len(scan.payloads),
                  "bytes_dropped": dropped, "damaged": [{"offset": start, "bytes": stop - start, "why": why}
                                                        for start, stop, why in scan.damaged]}
        self.salvaged.append(report)
        log.warning("salvaged %s: kept %d intact records, dropped %d damaged bytes at offsets %s; the damaged file "
                    "is %s", path, len(scan.payloads), dropped, [start for start, _, _ in scan.damaged], moved)
        if magic == _LOG_MAGIC:
            self._open_log(self._gen)  # the log we append to is the new file now
        return _HEADER.size + sum(_FRAME.size + len(p) for p in scan.payloads)

    def _writable_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"the write-ahead log in {self._dir} is closed")
        if not self._recovered:
            # Appending after a torn tail would bury good records behind garbage; cut the tail first.
            for _ in self._replay_log():
                pass
        return self._fd

    def append(self, record: bytes | list) -> None:
        """Write one record: it survives a process crash on return, and a machine crash per durability."""
        self.append_many([record])

    def append_many(self, records: list[bytes | list]) -> None:
        """Write a batch of records: small ones gathered into one write syscall, a large record's parts from
        their own memory (``_frame``)."""
        if not records:
            return
        fd = self._writable_fd()
        try:
            written = _write_all(fd, [buffer for record in records for buffer in _frame(record)])
        except OSError:
            # Cut any partial frame (disk full, say) so later appends stay readable; the caller must not ack.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._log_bytes)
            raise
        self._log_bytes += written
        if self._durability == "always":
            self._sync()
        elif self._durability == "batch":
            self._dirty = True

    @property
    def durability(self) -> str:
        return self._durability

    def _sync(self) -> None:
        assert self._fd is not None
        _datasync(self._fd)
        self.syncs += 1
        self._dirty = False
        self._last_sync = self._clock()

    def sync_if_due(self) -> bool:
        """Batch mode: fsync if appends are unsynced and the interval has passed (with ``background_sync``, start
        that fsync on its thread); True if it did. Raises the error of a background fsync that failed."""
        if self._sync_error is not None:
            raise self._sync_error
        if not self._dirty or self._clock() - self._last_sync < self._interval:
            return False
        if self._syncer is not None:
            self._dirty = False
            self._last_sync = self._clock()
            self._sync_wanted.set()
            return True
        self._sync()
        return True

    def time_until_sync(self) -> float | None:
        """Seconds until the pending batch fsync is due (0.0 if overdue); None when nothing is pending."""
        return max(0.0, self._last_sync + self._interval - self._clock()) if self._dirty else None

    def needs_compaction(self) -> bool:
        """Whether the log has outgrown the threshold and the last snapshot: a compaction rewrites the whole
        state, so it waits until the log is at least as large as that (as Redis's AOF rewrite waits for 100%
        growth), or a store of large values would rewrite all of them on every put past the threshold."""
        return self._log_bytes > self._threshold and self._log_bytes > self._snapshot_size

    def compact(self, records: Iterable[bytes | list]) -> None:
        """Make ``records`` (the store's full state) the snapshot, and start an empty log."""
        self._writable_fd()
        gen = self._gen + 1
        # Snapshot first: until it is durable, the old snapshot + old log are still the truth.
        _install(self._snap_path, _HEADER.pack(_SNAP_MAGIC, gen), (b for r in records for b in _frame(r)))
        self._known_snapshot_size = None
        self._start_empty_log(gen)

    @property
    def log_bytes(self) -> int:
        return self._log_bytes

    @property
    def snapshot_bytes(self) -> int:
        return self._snap_path.stat().st_size if self._snap_path.exists() else 0

    @property
    def _snapshot_size(self) -> int:
        """``snapshot_bytes``, read from the file once per compaction rather than on every check."""
        if self._known_snapshot_size is None:
            self._known_snapshot_size = self.snapshot_bytes
        return self._known_snapshot_size

    def close(self) -> None:
        """Fsync and close; safe to call more than once."""
        with self._fd_lock:
            fd, self._fd, self._dirty = self._fd, None, False
        if self._syncer is not None:  # it sees the log closed, and returns
            self._sync_wanted.set()
            self._syncer.join()
            self._syncer = None
        if fd is not None:
            try:
                _datasync(fd)  # even durability "none" syncs here: a clean shutdown should survive power loss
            finally:
                os.close(fd)
