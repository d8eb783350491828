"""Kernel locks that make "one cluster per home" and "one store per data directory" true, whatever the files say.

``HOME/supervisor.lock`` is held (``flock``, exclusive) by whoever owns the home: `cbctl up` takes it before it
touches anything, hands the same open file to the supervisor it starts, and the supervisor holds it for its
whole life. ``HOME/data/store.lock`` is held by the store process while it has the write-ahead log open
(``wal.py``). The kernel drops a lock when its last holder exits, however it exits (kill -9 included), so a
held lock always means a live process, and a free one means nobody is using the home, unlike the cluster file,
which can be stale, damaged or removed. The file's text is the holder's pid, for messages only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

SUPERVISOR_LOCK = "supervisor.lock"
STORE_LOCK = "store.lock"
#: Seconds ``acquire`` keeps trying: long enough to outlast another process's ``holder`` probe, short enough that a
#: second `cbctl up` still fails at once.
_PROBE_GRACE_S = 0.2


class LockHeld(Exception):
    """Another live process holds the lock; ``pid`` is the one written in it (0 when it wrote none yet)."""

    def __init__(self, path: Path, pid: int) -> None:
        super().__init__(f"{path} is held by pid {pid or 'unknown'}")
        self.path = path
        self.pid = pid


def acquire(path: Path, pid: int | None = None) -> int:
    """Take the exclusive lock on ``path`` (created 0600 if missing) without waiting and write ``pid`` (default:
    this process) into it; returns the open descriptor, which holds the lock until every copy of it is closed.
    Raises ``LockHeld`` if a live process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    # a few tries: ``holder`` probes take the lock shared for an instant, which must not fail a `cbctl up`
    deadline = time.monotonic() + _PROBE_GRACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            os.close(fd)
            raise LockHeld(path, holder_pid(path)) from None
        except BaseException:
            os.close(fd)
            raise
    write_pid(fd, os.getpid() if pid is None else pid)
    return fd


def write_pid(fd: int, pid: int) -> None:
    """Say who holds the lock now (`cbctl up` hands it on to the supervisor it starts)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(pid).encode(), 0)


def holder(path: Path) -> int | None:
    """The pid of the live process holding ``path`` (0 if it has not written one yet), or None if nobody holds
    it. A probe: the lock is taken and dropped at once if free."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder_pid(path)
    finally:
        os.close(fd)  # closing drops the shared lock it may have taken
    return None


def holder_pid(path: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip() or 0)
    return 0


def release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
