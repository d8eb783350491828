"""Large values between the processes of one host through shared memory, instead of through zmq.

zmq moves a value's frame through the kernel's socket buffers: a copy into them, a copy out, on a 2-core machine
about 1.5 GB/s at best, with every page of the receiver's frame freshly faulted. Between processes of one host a
value can instead be written once into a file in ``/dev/shm`` (tmpfs: memory, never disk) by its sender and
mapped, not copied, by its receiver. Only a small handle then travels through zmq, in the frame the value's
buffer would have had (``frames.py``'s multi-frame messages are otherwise unchanged), so a process that only
forwards a message (the scheduler) forwards the handle, never the value.

A handle is ``MAGIC``, a flags byte, the value's size (8 bytes, big-endian) and the segment's name. ``MAGIC``
starts with ``0xc1``, which no msgpack body starts with, and a handle is shorter than ``OUT_OF_BAND_BYTES``,
which every buffer frame is at least: a receiver tells a handle from a value's frames without being told.

Lifetime: every segment is unlinked exactly once, by its creator or by its receiver, and its memory goes back to
the system when the last process that maps it lets go of the mapping (Linux keeps an unlinked file's pages for
as long as they are mapped):
- ``TAKE`` (the default): the receiver unlinks it when it maps it. For values with one receiver that nobody sends
  again from the handle: results, a DAG step's output, store writes and reads.
- ``KEEP``: its creator unlinks it (``release``). For a client's call arguments, which the scheduler may dispatch
  a second time, from the same handle, after an executor died: the client releases them when the call's result
  comes (or when it closes).
- A segment whose message was lost (a receiver that died, a dropped frame) would outlive everything: ``sweep``
  (the supervisor's timer, and ``cbctl down``) unlinks those of processes that are gone, and ``TAKE`` segments
  older than ``ORPHAN_AGE_S`` (a receiver maps a ``TAKE`` segment as soon as it reads the message).

Segments are used only where both ends share this host's ``/dev/shm``: addresses on ipc or loopback TCP
(``is_local_address``). ``CBCTL_SHARED_MEMORY=0`` turns them off for a process that must not use them (one in a
container with its own ``/dev/shm`` that talks to a cluster over loopback, for instance): its values then travel as
zmq frames, and it still reads what others send it through segments it can see. A segment that cannot be made
(``/dev/shm`` full or missing) falls back to a zmq frame for that value, counted in ``stats["fallbacks"]``.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import secrets
import stat
import struct
import time
from itertools import count
from typing import Any

import zmq

from cbctl.runtime.defaults import OUT_OF_BAND_BYTES

#: Where segments live: tmpfs on every Linux.
DIRECTORY = "/dev/shm"
#: Smallest buffer, in bytes, sent through a segment; smaller ones stay zmq frames (the syscalls to make, map and
#: unlink a segment cost about what zmq's copies of 256 KiB do: ``python -m benchmarks.bigdata --threshold``).
SHARED_MIN_BYTES = 256 << 10
#: Age, in seconds, past which a ``TAKE`` segment no process has mapped is reclaimed by ``sweep``: its message was
#: lost, or waited unread in a socket's queue that long (its receiver then fails that value with a clear error).
ORPHAN_AGE_S = 600.0
#: Seconds a dead creator's segments are left for a receiver to map (a process may exit right after sending).
DEAD_CREATOR_GRACE_S = 10.0

MAGIC = b"\xc1cbshm"
TAKE = 0
KEEP = 1
_HANDLE = struct.Struct(">BQ")  # flags, size
_HEAD = len(MAGIC) + _HANDLE.size
#: A segment's name: cbctl-PID-TOKEN-SEQ-t (TAKE) or -k (KEEP); TOKEN tells apart processes that reuse a pid.
_NAME = re.compile(r"cbctl-([0-9]{1,7})-[0-9a-f]{8}-[0-9]{1,15}-([tk])")
HANDLE_MAX_BYTES = _HEAD + 48
assert HANDLE_MAX_BYTES < OUT_OF_BAND_BYTES  # see the module docstring: how handles are told from buffers

#: This process's counters (reported in its metrics): segments made and their bytes, segments mapped, buffers
#: that went as zmq frames because no segment could be made.
stats = {"segments_made": 0, "bytes_shared": 0, "segments_mapped": 0, "fallbacks": 0}

_seq = count()
_token = ""
_token_pid = 0
_enabled: bool | None = None


class Handle(bytes):
    """A received handle (the frame stands for ``size`` bytes of a value in segment ``name``)."""

    __slots__ = ()

    @property
    def size(self) -> int:
        return _HANDLE.unpack_from(self, len(MAGIC))[1]

    @property
    def keep(self) -> bool:
        return bool(self[len(MAGIC)] & KEEP)

    @property
    def name(self) -> str:
        return self[_HEAD:].decode("ascii", "replace")


class Gone:
    """What a handle whose segment could not be mapped becomes: decoding it raises ``DecodeError`` with
    ``reason`` (the call or read that carried it fails with that, instead of the whole message being dropped)."""

    __slots__ = ("reason", "size")

    def __init__(self, reason: str, size: int) -> None:
        self.reason = reason
        self.size = size

    def __len__(self) -> int:
        return self.size


def as_handle(frame: Any) -> Handle | None:
    """``frame`` (a received part of a multi-frame message) as a ``Handle``, or None when it is a value's bytes."""
    if len(frame) > HANDLE_MAX_BYTES or len(frame) <= _HEAD:
        return None
    data = frame.bytes if type(frame) is zmq.Frame else bytes(frame)
    return Handle(data) if data.startswith(MAGIC) else None


def enabled() -> bool:
    """Whether this process makes segments (``CBCTL_SHARED_MEMORY``, and a writable ``/dev/shm``)."""
    global _enabled
    if _enabled is None:
        _enabled = os.environ.get("CBCTL_SHARED_MEMORY", "1") != "0" and os.access(DIRECTORY, os.W_OK | os.X_OK)
    return _enabled


def set_enabled(value: bool | None) -> None:
    """Turn segments on or off for this process (None: as the environment says, on next use); for tests."""
    global _enabled
    _enabled = value


def is_local_address(address: str) -> bool:
    """Whether a peer at ``address`` shares this host's ``/dev/shm``: ipc, or TCP on a loopback address."""
    if address.startswith("ipc://"):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[6:].rpartition(":")[0]
    return host.startswith("127.") or host in ("localhost", "[::1]")


def _name(flags: int) -> str:
    global _token, _token_pid
    pid = os.getpid()
    if pid != _token_pid:  # a forked child must not make its parent's names
        _token, _token_pid = secrets.token_hex(4), pid
    return f"cbctl-{pid}-{_token}-{next(_seq)}-{'k' if flags & KEEP else 't'}"


def part_nbytes(part: Any) -> int:
    """Bytes of the value a part of a multi-frame message carries (a handle's: its segment's)."""
    if type(part) is Handle:
        return part.size
    return part.nbytes if type(part) is memoryview else len(part)


def export(frames: list[Any], flags: int = TAKE, made: list[str] | None = None) -> list[Any]:
    """``frames`` (a multi-frame message: header, then parts) with each buffer of at least ``SHARED_MIN_BYTES``
    written to a new segment and replaced by its handle; handles already in it go on as they are. The names of
    the segments made are appended to ``made`` (a ``KEEP`` creator releases them later)."""
    out = None
    for i in range(1, len(frames)):
        part = frames[i]
        if type(part) is Handle or part_nbytes(part) < SHARED_MIN_BYTES:
            continue
        handle = _write(part, flags)
        if handle is None:
            continue
        if out is None:
            out = list(frames)
        out[i] = handle
        if made is not None:
            made.append(handle[_HEAD:].decode())
    return frames if out is None else out


def _write(part: Any, flags: int) -> bytes | None:
    """A new segment holding ``part``'s bytes, as its handle; None when it cannot be made (the part then goes
    as a zmq frame)."""
    view = memoryview(part.buffer if type(part) is zmq.Frame else part).cast("B")
    name = _name(flags)
    path = os.path.join(DIRECTORY, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        stats["fallbacks"] += 1
        return None
    try:
        written = 0
        while written < view.nbytes:  # a write moves at most about 2 GiB
            written += os.write(fd, view[written:])
    except OSError:  # /dev/shm full (ENOSPC), or over a quota: this value goes as a frame
        os.close(fd)
        _unlink(name)
        stats["fallbacks"] += 1
        return None
    os.close(fd)
    stats["segments_made"] += 1
    stats["bytes_shared"] += view.nbytes
    return MAGIC + _HANDLE.pack(flags, view.nbytes) + name.encode()


def attach(handle: Handle) -> mmap.mmap | Gone:
    """The segment ``handle`` names, mapped (read-write, private to this process once unlinked): a ``TAKE``
    segment is unlinked now. ``Gone`` when it cannot be mapped, saying why."""
    name, size = handle.name, handle.size
    if _NAME.fullmatch(name) is None:
        return Gone(f"a shared-memory handle names {name[:60]!r}, which is not a cbctl segment", size)
    path = os.path.join(DIRECTORY, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        why = ("it is gone: its sender released it, or it waited unread past its age limit"
               if exc.errno == errno.ENOENT else os.strerror(exc.errno or 0))
        return Gone(f"the value sent through shared memory segment {name} cannot be read here ({why}); if this "
                    f"process does not share {DIRECTORY} with its sender, set CBCTL_SHARED_MEMORY=0 in the sender's "
                    "environment", size)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != size or info.st_uid != os.geteuid():
            return Gone(f"shared memory segment {name} is not the {size}-byte file its handle says", size)
        mapped = mmap.mmap(fd, size)
    except (OSError, ValueError) as exc:
        return Gone(f"shared memory segment {name} cannot be mapped ({exc})", size)
    finally:
        os.close(fd)
        if not handle.keep:
            _unlink(name)
    stats["segments_mapped"] += 1
    return mapped


def attach_parts(parts: list[Any]) -> None:
    """Map, in place, every handle among a received message's parts."""
    for i, part in enumerate(parts):
        if type(part) is Handle:
            parts[i] = attach(part)


def materialize(frames: list[Any]) -> list[Any]:
    """``frames`` for a peer that does not share this host's ``/dev/shm``: each handle replaced by its segment's
    bytes (mapped here, sent by zmq from the mapping)."""
    if not any(type(f) is Handle for f in frames):
        return frames
    out = list(frames)
    for i, part in enumerate(out):
        if type(part) is Handle:
            mapped = attach(part)
            # a segment that is gone cannot be sent on: its receiver gets an empty buffer and fails to decode it
            out[i] = b"" if type(mapped) is Gone else mapped
    return out


def release(names: list[str]) -> None:
    """Unlink segments this process made with ``KEEP`` (those already unlinked are skipped)."""
    for name in names:
        _unlink(name)


def _unlink(name: str) -> None:
    if _NAME.fullmatch(name) is None:  # a handle from a frame may name anything: only segments are unlinked
        return
    try:
        os.unlink(os.path.join(DIRECTORY, name))
    except OSError:
        pass


def sweep(alive: Any, now: float | None = None, grace_s: float = DEAD_CREATOR_GRACE_S,
          orphan_age_s: float = ORPHAN_AGE_S) -> int:
    """Unlink segments whose creator is gone (``alive(pid)`` false) for longer than ``grace_s``, and ``TAKE``
    segments older than ``orphan_age_s``; returns how many. Segments of this user only."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(DIRECTORY))
    except OSError:
        return 0
    uid = os.geteuid()
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid != uid:
            continue
        age = now - info.st_mtime
        orphan = match.group(2) == "t" and age > orphan_age_s
        if orphan or (age > grace_s and not alive(int(match.group(1)))):
            _unlink(entry.name)
            removed += 1
    return removed


def mine() -> list[str]:
    """Names of the segments this process made that still exist (for tests and diagnostics)."""
    prefix = f"cbctl-{os.getpid()}-"
    try:
        return sorted(n for n in os.listdir(DIRECTORY) if n.startswith(prefix))
    except OSError:
        return []
