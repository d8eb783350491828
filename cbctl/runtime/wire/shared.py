"""Large values between the processes of one host through shared memory, instead of through zmq.

zmq moves a value's frame through the kernel's socket buffers: a copy into them, a copy out, on a 2-core machine
about 1.5 GB/s at best, with every page of the receiver's frame freshly faulted. Between processes of one host a
value can instead be copied once by its sender into a file in ``/dev/shm`` (tmpfs: memory, never disk) and mapped,
not copied, by its receiver. Only a small handle then travels through zmq, in the frame the value's buffer would
have had (``frames.py``'s multi-frame messages are otherwise unchanged), so a process that only forwards a message
(the scheduler) forwards the handle, never the value.

**Segments are reused.** Most of the cost of a fresh tmpfs file is the kernel allocating its pages (32 MB: about
13 ms of a 16 ms write, where copying into pages already there takes 3). So a sender keeps a small pool of
segments, and lends one for each value: it copies the value in, hard-links the segment under a new name for this
one lending, and sends that name. A receiver opens the name, takes a shared ``flock`` on the segment, unlinks the
name, maps the value, and holds the lock until its mapping is garbage (numpy arrays over it keep it alive). The
sender reuses a segment only when it has no lending names left (``st_nlink == 1``: every receiver has locked it)
and an exclusive ``flock`` would be granted (no receiver maps it any more). The kernel drops a dead receiver's
locks, so a crash frees its segments; a lending name whose message was lost is removed by ``sweep``. Each mapping
keeps a descriptor open: a process that already holds a quarter of its descriptor limit in mappings (the limit is
first raised as far as the system lets) copies a value out of its segment instead of keeping it mapped.

A handle is ``MAGIC``, a flags byte, the value's size (8 bytes, big-endian) and the lending name. ``MAGIC`` starts
with ``0xc1``, which no msgpack body starts with, and a handle is shorter than ``OUT_OF_BAND_BYTES``, which every
buffer frame is at least: a receiver tells a handle from a value's frames without being told.

Who unlinks a lending name:
- ``TAKE`` (the default): its receiver, once it holds the lock. For values with one receiver that nobody sends
  again from the handle: results, a DAG step's output, store writes and reads.
- ``KEEP``: its lender (``release``). For a client's call arguments, which the scheduler may dispatch a second
  time, from the same handle, after an executor died: the client releases them when the call's result comes (or
  when it closes).
- ``sweep`` (the supervisor's timer, and ``cbctl down``): names and segments of processes that are gone, and
  ``TAKE`` names older than ``ORPHAN_AGE_S`` (a receiver takes a ``TAKE`` name as soon as it reads the message).

Segments are used only where both ends share this host's ``/dev/shm``: addresses on ipc or loopback TCP
(``is_local_address``). ``CBCTL_SHARED_MEMORY=0`` turns them off for a process that must not use them (one in a
container with its own ``/dev/shm`` that talks to a cluster over loopback, for instance): its values then travel as
zmq frames, and it still reads what others send it through segments it can see. A segment that cannot be made
(``/dev/shm`` full or missing) leaves that value to go as a zmq frame, counted in ``stats["fallbacks"]``.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import mmap
import os
import re
import resource
import stat
import struct
import threading
import time
import weakref
from itertools import count
from typing import Any

import zmq

from cbctl.runtime.defaults import (
    DEAD_CREATOR_GRACE_S,
    ORPHAN_AGE_S,
    OUT_OF_BAND_BYTES,
    POOL_IDLE_S,
    POOL_MAX_BYTES,
    POOL_MAX_SEGMENTS,
    SHARED_MIN_BYTES,
)

#: Where segments live: tmpfs on every Linux.
DIRECTORY = "/dev/shm"

MAGIC = b"\xc1cbshm"
TAKE = 0
KEEP = 1
#: The receiver maps it copy-on-write: the segment is a value someone else keeps (the store's), not the receiver's.
PRIVATE = 2
_HANDLE = struct.Struct(">BQ")  # flags, size
_HEAD = len(MAGIC) + _HANDLE.size
#: cbctl-PID-TOKEN-SEQ-s (a pooled segment), -t (a TAKE lending name), -k (KEEP) or -h (a value a holder keeps:
#: ``hold``); TOKEN tells apart processes that reuse a pid.
_NAME = re.compile(r"cbctl-([0-9]{1,7})-[0-9a-f]{8}-[0-9]{1,15}-([stkh])")
HANDLE_MAX_BYTES = _HEAD + 48
assert HANDLE_MAX_BYTES < OUT_OF_BAND_BYTES  # see the module docstring: how handles are told from buffers

#: This process's counters: values lent and their bytes, segments made (the rest reused one), segments mapped,
#: buffers that went as zmq frames because no segment could be had, and values copied out of their segment
#: because this process held as many locked mappings as it may (``_lock_bound``).
stats = {"values_lent": 0, "bytes_lent": 0, "segments_made": 0, "segments_mapped": 0, "fallbacks": 0,
         "copied_out": 0}

_seq = count()
_token = os.urandom(4).hex()  # this process's, in its names (a forked child draws its own)
_enabled: bool | None = None


class Handle(bytes):
    """A received handle: the frame stands for ``size`` bytes of a value lent under ``name``."""

    __slots__ = ()

    @property
    def size(self) -> int:
        return _HANDLE.unpack_from(self, len(MAGIC))[1]

    @property
    def keep(self) -> bool:
        return bool(self[len(MAGIC)] & KEEP)

    @property
    def private(self) -> bool:
        """Mapped copy-on-write: what the receiver writes stays its own (a KEEP value may be taken again, a
        held one is its holder's)."""
        return bool(self[len(MAGIC)] & (KEEP | PRIVATE))

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


class _Segment:
    """A pooled segment of this process: its name, an open descriptor (for the lock test) and the mapping the
    sender copies values into."""

    __slots__ = ("name", "fd", "mapped", "capacity", "lent_at")

    def __init__(self, name: str, fd: int, mapped: mmap.mmap, capacity: int) -> None:
        self.name = name
        self.fd = fd
        self.mapped = mapped
        self.capacity = capacity
        self.lent_at = 0.0

    def is_free(self) -> bool:
        """No lending name left and no receiver mapping it (see the module docstring)."""
        try:
            if os.fstat(self.fd).st_nlink != 1:
                return False
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: a receiver holds its shared lock
            return False
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return True

    def close(self) -> None:
        _unlink(self.name)
        self.mapped.close()  # nothing keeps a view of it: values are copied in, and receivers map their own
        os.close(self.fd)


_pool: list[_Segment] = []
#: Guards the pool: a client lends from every thread that calls, and two must never fill one segment.
_pool_lock = threading.Lock()
#: Mappings this process holds (each keeps a descriptor open, and the segment's lock), and how many it may.
_locked = 0
_bound: int | None = None
#: Mappings this process holds as values (``hold``), by the name that keeps their segment: lent on without a copy.
_held: weakref.WeakKeyDictionary[mmap.mmap, str] = weakref.WeakKeyDictionary()


def _forget_pool_in_child() -> None:
    """A forked child: the pool (and a lock another thread may have held at the fork) are its parent's, and it
    names its segments with a token of its own."""
    global _pool, _pool_lock, _token
    _pool, _pool_lock, _token = [], threading.Lock(), os.urandom(4).hex()


os.register_at_fork(after_in_child=_forget_pool_in_child)
#: How this process treats the handles it receives: whether ``frames.unpack`` maps them (every process that reads
#: values; the scheduler, which only forwards them, forwards the handles), and whether ``attach`` holds the values
#: it maps (``hold``: the store, which keeps what it is sent).
attach_on_unpack = True
hold_on_attach = False


def as_handle(frame: Any) -> Handle | None:
    """``frame`` (a received part of a multi-frame message) as a ``Handle``, or None when it is a value's bytes."""
    if len(frame) > HANDLE_MAX_BYTES or len(frame) <= _HEAD:
        return None
    data = frame.bytes if type(frame) is zmq.Frame else bytes(frame)
    return Handle(data) if data.startswith(MAGIC) else None


def enabled() -> bool:
    """Whether this process lends values through segments (``CBCTL_SHARED_MEMORY``, and a writable ``/dev/shm``)."""
    global _enabled
    if _enabled is None:
        _enabled = os.environ.get("CBCTL_SHARED_MEMORY", "1") != "0" and os.access(DIRECTORY, os.W_OK | os.X_OK)
    return _enabled


def set_enabled(value: bool | None) -> None:
    """Turn lending on or off for this process (None: as the environment says, on next use); for tests."""
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


def part_nbytes(part: Any) -> int:
    """Bytes of the value a part of a multi-frame message carries (a handle's: its value's)."""
    if type(part) is Handle:
        return part.size
    return part.nbytes if type(part) is memoryview else len(part)


def _name(kind: str) -> str:
    return f"cbctl-{os.getpid()}-{_token}-{next(_seq)}-{kind}"


def outgoing(frames: list[Any], local: bool, lends: bool = True) -> list[Any]:
    """A multi-frame message as it goes to a peer: its large buffers lent (``lends``, and lending is on) when the
    peer is ``local`` (``is_local_address``); the values behind its handles when it is not."""
    if not local:
        return materialize(frames)
    return export(frames) if lends and enabled() else frames


def export(frames: list[Any], flags: int = TAKE, made: list[str] | None = None) -> list[Any]:
    """``frames`` (a multi-frame message: header, then parts) with each buffer of at least ``SHARED_MIN_BYTES``
    lent through a segment and replaced by its handle; handles already in it go on as they are. The lending
    names are appended to ``made`` (a ``KEEP`` lender releases them later)."""
    out = None
    for i in range(1, len(frames)):
        part = frames[i]
        if type(part) is Handle or part_nbytes(part) < SHARED_MIN_BYTES:
            continue
        held = _held.get(part) if type(part) is mmap.mmap else None
        handle = lend(part, flags) if held is None else _lend_held(held, len(part), flags)
        if handle is None:
            continue
        if out is None:
            out = list(frames)
        out[i] = handle
        if made is not None:
            made.append(handle[_HEAD:].decode())
    return frames if out is None else out


def lend(part: Any, flags: int = TAKE) -> bytes | None:
    """Copy ``part``'s bytes into a free segment of the pool and lend it: the handle; None when no segment can
    be had (the part then goes as a zmq frame)."""
    view = memoryview(part.buffer if type(part) is zmq.Frame else part).cast("B")
    size = view.nbytes
    with _pool_lock:  # until the lending name exists: from then on the segment is not free
        segment = _segment_for(size)
        if segment is None:
            stats["fallbacks"] += 1
            return None
        segment.mapped[:size] = view
        name = _name("k" if flags & KEEP else "t")
        try:
            os.link(os.path.join(DIRECTORY, segment.name), os.path.join(DIRECTORY, name))
        except OSError:
            stats["fallbacks"] += 1
            return None
        segment.lent_at = time.monotonic()
    stats["values_lent"] += 1
    stats["bytes_lent"] += size
    return MAGIC + _HANDLE.pack(flags, size) + name.encode()


def _lend_held(held: str, size: int, flags: int) -> bytes | None:
    """Lend a value this process holds (``hold``) without copying it: a new name for its segment, mapped
    copy-on-write by the receiver."""
    name = _name("k" if flags & KEEP else "t")
    try:
        os.link(os.path.join(DIRECTORY, held), os.path.join(DIRECTORY, name))
    except OSError:
        stats["fallbacks"] += 1
        return None
    stats["values_lent"] += 1
    stats["bytes_lent"] += size
    return MAGIC + _HANDLE.pack(flags | PRIVATE, size) + name.encode()


def _segment_for(size: int) -> _Segment | None:
    """A free pooled segment of at least ``size`` bytes (the smallest), or a new one; None if none can be made."""
    now = time.monotonic()
    best = None
    for segment in _pool:
        if segment.capacity >= size and (best is None or segment.capacity < best.capacity) and segment.is_free():
            best = segment
    if best is not None:
        return best
    capacity = max(1 << (size - 1).bit_length(), 1 << 20)
    # room for it: let go of the least recently lent segments past the bounds
    _pool.sort(key=lambda s: s.lent_at)
    while _pool and (len(_pool) >= POOL_MAX_SEGMENTS
                     or sum(s.capacity for s in _pool) + capacity > POOL_MAX_BYTES):
        _pool.pop(0).close()
    _trim(now)
    return _new_segment(capacity)


def _new_segment(capacity: int) -> _Segment | None:
    name = _name("s")
    path = os.path.join(DIRECTORY, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        # allocated now, so a full /dev/shm is an error here and never a SIGBUS when the copy touches a page
        os.posix_fallocate(fd, 0, capacity)
        mapped = mmap.mmap(fd, capacity)
    except OSError:
        os.close(fd)
        _unlink(name)
        return None
    segment = _Segment(name, fd, mapped, capacity)
    if not _pool:
        atexit.register(close_pool)  # a client's process; servers close theirs as they stop (exits skip atexit)
    _pool.append(segment)
    stats["segments_made"] += 1
    return segment


def trim(now: float | None = None) -> None:
    """Let go of pooled segments not lent for ``POOL_IDLE_S`` (and free): their memory is this process's."""
    if not _pool:
        return
    now = time.monotonic() if now is None else now
    with _pool_lock:
        _trim(now)


def _trim(now: float) -> None:
    for segment in [s for s in _pool if now - s.lent_at > POOL_IDLE_S and s.is_free()]:
        _pool.remove(segment)
        segment.close()


def close_pool() -> None:
    """Let go of every pooled segment (a process that stops)."""
    with _pool_lock:
        while _pool:
            _pool.pop().close()


def attach(handle: Handle) -> mmap.mmap | Gone:
    """The value ``handle`` lends, mapped (read-write; its lender does not touch it while it is mapped), its
    segment locked for as long as the mapping lives; a ``TAKE`` name is unlinked now. ``Gone`` when it cannot
    be mapped, saying why."""
    name, size = handle.name, handle.size
    if _NAME.fullmatch(name) is None or name[-1] not in "tk":
        return Gone(f"a shared-memory handle names {name[:60]!r}, which is not a cbctl lending name", size)
    path = os.path.join(DIRECTORY, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        why = ("it is gone: its sender released it, or it waited unread past its age limit"
               if exc.errno == errno.ENOENT else os.strerror(exc.errno or 0))
        return Gone(f"the value sent through shared memory ({name}) cannot be read here ({why}); if this process "
                    f"does not share {DIRECTORY} with its sender, set CBCTL_SHARED_MEMORY=0 in the sender's "
                    "environment", size)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # the lender holds its exclusive test lock for microseconds at most
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size < size or info.st_uid != os.geteuid():
            raise ValueError(f"it is not a file of this user of at least the {size} bytes its handle says")
        mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE if handle.private else mmap.MAP_SHARED)
    except (OSError, ValueError) as exc:
        os.close(fd)
        if not handle.keep:
            _unlink(name)
        return Gone(f"shared memory {name} cannot be mapped ({exc})", size)
    os.close(fd)  # the mapping holds a descriptor of its own (Python's mmap keeps a dup), and with it the lock
    stats["segments_mapped"] += 1
    global _locked
    if _locked >= _lock_bound():
        # this process already holds as many mappings (each a descriptor) as it should: the value is copied into
        # memory of its own and the segment let go at once
        private = mmap.mmap(-1, size)
        private[:] = mapped
        mapped.close()
        if not handle.keep:
            _unlink(name)
        stats["copied_out"] += 1
        return private
    _locked += 1
    kept = ""
    if not handle.keep:
        if hold_on_attach and not handle.private:
            kept = _name("h")
            try:  # the value's segment stays reachable under a name of this holder's, to lend it on
                os.rename(path, os.path.join(DIRECTORY, kept))
                _held[mapped] = kept
            except OSError:
                kept = ""
        if not kept:
            _unlink(name)
    weakref.finalize(mapped, _let_go, kept)  # the lock goes with the mapping: the lender may reuse the segment
    return mapped


def _let_go(kept: str) -> None:
    global _locked
    _locked -= 1
    if kept:
        _unlink(kept)


def _lock_bound() -> int:
    """How many mappings this process keeps, each with an open descriptor: a quarter of its descriptor limit,
    which is first raised as far as the system lets (a client may hold thousands of large results, the store
    thousands of values)."""
    global _bound
    if _bound is None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft != resource.RLIM_INFINITY and soft < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                soft = want
            except (OSError, ValueError):
                pass
        _bound = max(16, min(soft if soft != resource.RLIM_INFINITY else 65536, 1 << 20) // 4)
    return _bound


def attach_parts(parts: list[Any]) -> None:
    """Map, in place, every handle among a received message's parts."""
    for i, part in enumerate(parts):
        if type(part) is Handle:
            parts[i] = attach(part)


def materialize(frames: list[Any]) -> list[Any]:
    """``frames`` for a peer that does not share this host's ``/dev/shm``: each handle replaced by its value
    (mapped here, sent by zmq from the mapping)."""
    if not any(type(f) is Handle for f in frames):
        return frames
    out = list(frames)
    for i, part in enumerate(out):
        if type(part) is Handle:
            mapped = attach(part)
            # a value that is gone cannot be sent on: its receiver gets an empty buffer and fails to decode it
            out[i] = b"" if type(mapped) is Gone else mapped
    return out


def release(names: list[str]) -> None:
    """Unlink lending names this process made with ``KEEP`` (those already unlinked are skipped)."""
    for name in names:
        _unlink(name)


def _unlink(name: str) -> None:
    if _NAME.fullmatch(name) is None:  # a handle from a frame may name anything: only cbctl's names are unlinked
        return
    try:
        os.unlink(os.path.join(DIRECTORY, name))
    except OSError:
        pass


def sweep(alive: Any, now: float | None = None, grace_s: float = DEAD_CREATOR_GRACE_S,
          orphan_age_s: float = ORPHAN_AGE_S) -> int:
    """Unlink segments and lending names whose process is gone (``alive(pid)`` false) for longer than
    ``grace_s``, and ``TAKE`` lending names older than ``orphan_age_s``; returns how many. This user's only."""
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
        age = now - info.st_ctime  # a link's creation changes its inode's ctime: a lending's age
        orphan = match.group(2) == "t" and age > orphan_age_s
        if orphan or (age > grace_s and not alive(int(match.group(1)))):
            _unlink(entry.name)
            removed += 1
    return removed


def mine() -> list[str]:
    """Names this process made that still exist (its pooled segments and lending names not yet taken)."""
    prefix = f"cbctl-{os.getpid()}-"
    try:
        return sorted(n for n in os.listdir(DIRECTORY) if n.startswith(prefix))
    except OSError:
        return []
