"""The cluster directory: where a cluster's files live, and the cluster file that says it is up.

``$CBCTL_HOME`` holds ``supervisor.lock`` (held by the live supervisor: see ``home_lock``), ``cluster.json``
(written by the supervisor once every child is ready, and rewritten by it if damaged or removed), ``data/``
(the store's log and snapshots), ``logs/`` (one file per process) and ``sock/`` (ipc sockets). When the
home path is too long for an ipc socket path, the sockets go to a short directory under the system temp
directory named by a hash of the home, so two homes never share sockets; it is removed when the cluster
stops (``remove_socket_dir``). ``keys/`` holds the CURVE keys
of a cluster that listens on TCP (``auth.py``).

All of it is private to the user: directories 0700, files 0600 (``secure_home``, and a umask of 077 in
`cbctl up` and every cluster process), so no other user can reach an ipc socket, read a log or the data.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cbctl.errors import ClusterNotRunning, InvalidArgument
from cbctl.runtime import home_lock
from cbctl.runtime.defaults import (
    CLUSTER_FILE_REPAIR_WAIT_S,
    DEFAULT_HOME,
    DEPARTURE_TIMEOUT_S,
    MAX_IPC_PATH,
    MAX_MESSAGE_BYTES,
    STALE_KILL_WAIT_S,
)
from cbctl.runtime.defaults import PRIVATE_UMASK as PRIVATE_UMASK  # what `cbctl up` and every process create under

# hashlib, socket and tempfile are imported where they are used: only a long home, a socket probe or a joined host
# needs them, and every command and process of a cluster imports this module (`cbctl up` first of all)

CLUSTER_FILE = "cluster.json"
NODE_FILE = "node.json"  # on a joined host: its node supervisor (``cbctl join``; ``cbctl leave`` reads it)
STARTUP_ERROR_FILE = "startup-error.txt"  # the supervisor's reason for a failed start, which `cbctl up` shows
#: In ``data/``: what the store's recovery with `cbctl up --salvage` dropped (JSON), for `cbctl up` to show.
SALVAGE_REPORT = "salvage-report.json"
#: The files cbctl itself writes at the top of the home (the home may hold others: they are not ours to touch).
TOP_LEVEL_FILES = (CLUSTER_FILE, CLUSTER_FILE + ".tmp", STARTUP_ERROR_FILE, NODE_FILE, NODE_FILE + ".tmp",
                   home_lock.SUPERVISOR_LOCK)
KEYS_DIR = "keys"  # a TCP cluster's CURVE keys (see wire/auth.py)
PRIVATE_SUBDIRS = ("logs", "data", KEYS_DIR)


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The cluster directory: the argument, else $CBCTL_HOME, else ~/.cbctl (absolute, not created)."""
    raw = home if home is not None else os.environ.get("CBCTL_HOME") or DEFAULT_HOME
    return Path(raw).expanduser().resolve()


def socket_dir(home: Path) -> Path:
    candidate = home / "sock"
    if len(str(candidate)) + 24 <= MAX_IPC_PATH:
        return candidate
    import hashlib
    import tempfile

    digest = hashlib.sha1(str(home).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"cbctl-{digest}"


def remove_socket_dir(home: Path, address: str = "") -> None:
    """Remove the short socket directory under the temp directory that ``home`` falls back to (``socket_dir``)
    once its cluster is gone: nothing else would, while the home's own ``sock/`` goes with the home. An ipc
    ``address`` of the cluster names the directory when known (the caller's temp directory may not be the one
    `cbctl up` ran with); a directory of another user, inside the home, or with a socket some process still
    listens on (a cluster that started meanwhile) is left alone."""
    directory = Path(address.removeprefix("ipc://")).parent if address.startswith("ipc://") else socket_dir(home)
    if directory == home / "sock" or not directory.name.startswith("cbctl-"):
        return
    try:
        if directory.stat().st_uid != os.getuid() or any(_listening(path) for path in directory.iterdir()):
            return
    except OSError:
        return  # already gone
    shutil.rmtree(directory, ignore_errors=True)


def _listening(path: Path) -> bool:
    if not path.is_socket():
        return False
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False  # refused: the socket file of a process that is gone
    return True


def secure_home(home: Path) -> list[Path]:
    """Create the cluster directory and its subdirectories private to the user, and make private whatever an
    earlier cluster (or another tool) left more open. Returns the paths whose permissions it tightened.

    The short socket directory under the temp directory has a predictable name, so another user could make it
    first and read or replace our sockets there: it must be ours, or the home is refused."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    tightened = [home] if _make_private(home, 0o700) else []
    for sub in PRIVATE_SUBDIRS:
        directory = home / sub
        if sub != KEYS_DIR:  # created by `cbctl up` only for a TCP cluster
            directory.mkdir(exist_ok=True, mode=0o700)
        tightened += [directory] if _make_private(directory, 0o700) else []
        if directory.is_dir():
            tightened += [p for p in directory.rglob("*") if _make_private(p, 0o700 if p.is_dir() else 0o600)]
    tightened += [home / name for name in TOP_LEVEL_FILES if _make_private(home / name, 0o600)]
    sockets = socket_dir(home)
    sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
    if sockets.stat().st_uid != os.getuid():
        raise InvalidArgument(f"the socket directory {sockets} belongs to another user, who could reach this "
                              "cluster's sockets: remove it, or use a shorter CBCTL_HOME (sockets then go in it)")
    tightened += [sockets] if _make_private(sockets, 0o700) else []
    return tightened


def _make_private(path: Path, mode: int) -> bool:
    """chmod ``path`` to ``mode`` if group or others have any access to it; True if it did. Sockets and links
    are left alone (a socket's directory guards it; a link's mode means nothing)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)) or info.st_mode & 0o077 == 0:
        return False
    os.chmod(path, mode)
    return True


def ipc_address(home: Path, name: str) -> str:
    return f"ipc://{socket_dir(home) / name}"


def log_path(home: Path, role: str, index: int) -> Path:
    return home / "logs" / f"{role}-{index}.log"


def data_dir(home: Path) -> Path:
    return home / "data"


def lock_path(home: Path) -> Path:
    """The lock the home's live supervisor holds (``home_lock``)."""
    return home / home_lock.SUPERVISOR_LOCK


def home_holder(home: Path) -> int | None:
    """The pid of the supervisor (or starting `cbctl up`) that holds ``home``, or None if nobody does."""
    return home_lock.holder(lock_path(home))


@dataclass
class ProcessEntry:
    role: str
    index: int
    pid: int
    address: str
    started_at: float
    restarts: int = 0
    executor_type: str = ""
    host: str = ""  # '' for the head's own processes; a joined host's name for its executors (``cbctl join``)


@dataclass
class ClusterFile:
    """What ``cbctl up`` leaves behind for every later command (and other clients) to find the cluster."""

    home: str
    supervisor_pid: int
    supervisor_create_time: float
    control_address: str
    store_address: str
    scheduler_addresses: list[str]
    started_at: float
    version: str
    processes: list[ProcessEntry] = field(default_factory=list)
    max_message_bytes: int = MAX_MESSAGE_BYTES  # the largest serialised value clients may send
    auth: str = "none"  # "curve": TCP sockets admit only holders of HOME/keys (see auth.py); never a key itself
    departure_timeout_s: float = DEPARTURE_TIMEOUT_S  # `cbctl up --departure-timeout`: how long `scale` may take
    #: The machine (and pid namespace) whose pids ``processes`` names (``pid_space()``): a copy of the file on
    #: another machine (``cbctl join``, a remote client) must not check or signal those pids there.
    pid_space: str = ""
    head_host: str = ""  # the head's host as executors' ids and `cbctl top` name it (its --listen host)
    # unix times of the supervisor's start-up steps (`cbctl up --verbose` shows where the time went)
    startup: dict[str, float] = field(default_factory=dict)

    def write(self, home: Path) -> None:
        tmp = home / (CLUSTER_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, home / CLUSTER_FILE)

    @classmethod
    def read(cls, home: Path) -> ClusterFile | None:
        try:
            raw: dict[str, Any] = json.loads((home / CLUSTER_FILE).read_text())
            raw["processes"] = [ProcessEntry(**p) for p in raw.get("processes", [])]
            # fields a newer cbctl added are left out, so a client of this version still finds the cluster
            return cls(**{name: value for name, value in raw.items() if name in _CLUSTER_FILE_FIELDS})
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ValueError, TypeError, AttributeError):
            return None  # a half-written, damaged or foreign file (`[]`, `null`, `{}`, wrong types)

    def is_local(self) -> bool:
        """Whether this file's processes run on this machine (in this pid namespace), so their pids mean
        something here. A file from before ``pid_space`` existed is local."""
        return not self.pid_space or self.pid_space == pid_space()

    def pids(self) -> list[int]:
        """The supervisor's pid, then every child's: of this machine only (a joined host's executors have pids of
        their own machine; a copy of the head's file on another machine names none of this one's)."""
        if not self.is_local():
            return []
        return [self.supervisor_pid] + [p.pid for p in self.processes if not p.host]

    def supervisor_alive(self) -> bool:
        import psutil  # here, not at the top: `cbctl up` in a fresh home never needs it

        try:
            proc = psutil.Process(self.supervisor_pid)
            # pid reuse: the same pid started at another time is another process. A zombie is dead too: the
            # detached supervisor's parent is init, which (in containers especially) may reap it late.
            return (abs(proc.create_time() - self.supervisor_create_time) < 1.0 and proc.is_running()
                    and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False


_CLUSTER_FILE_FIELDS = frozenset(f.name for f in fields(ClusterFile))
def pid_space() -> str:
    """This machine's pid space: its boot id and the pid namespace of this process. Two processes with the
    same value can tell each other's pids apart from other processes'; any other pid is another machine's."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""  # not Linux: every file counts as local, as before hosts existed
    return f"{boot}/{namespace}"


@dataclass
class NodeFile:
    """What ``cbctl join`` leaves on a joined host: its node supervisor and executors, for ``cbctl leave``."""

    host: str
    head: str  # the scheduler address it joined
    node_pid: int
    create_time: float
    pid_space: str
    control_address: str
    started_at: float
    executors: list[ProcessEntry] = field(default_factory=list)

    def write(self, home: Path) -> None:
        tmp = home / (NODE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, home / NODE_FILE)

    @classmethod
    def read(cls, home: Path) -> NodeFile | None:
        try:
            raw: dict[str, Any] = json.loads((home / NODE_FILE).read_text())
            raw["executors"] = [ProcessEntry(**p) for p in raw.get("executors", [])]
            return cls(**raw)
        except (FileNotFoundError, NotADirectoryError, ValueError, TypeError):
            return None

    def alive(self) -> bool:
        """Whether its node supervisor runs (here: a file from another pid space is not ours to judge)."""
        if self.pid_space != pid_space():
            return False
        import psutil  # here, as in supervisor_alive: `cbctl up` in a fresh home never needs it

        try:
            proc = psutil.Process(self.node_pid)
            return (abs(proc.create_time() - self.create_time) < 1.0 and proc.is_running()
                    and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False


def address_towards(address: str) -> str:
    """``tcp://LOCAL``: this machine's address on the route to ``address`` (``tcp://HOST:PORT``), which the
    processes there can reach it at (unless a NAT stands between). A UDP socket's connect picks the route and
    sends nothing."""
    import socket

    host, _, port = address.removeprefix("tcp://").rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, int(port)))
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"no route to {address} ({exc}): check the address, or say which address of this "
                                  "machine to use (advertise=tcp://ADDR, or $CBCTL_ADVERTISE)") from None
        local = probe.getsockname()[0]
    return f"tcp://[{local}]" if family == socket.AF_INET6 else f"tcp://{local}"


def remove_cluster_file(home: Path) -> None:
    try:
        (home / CLUSTER_FILE).unlink()
    except FileNotFoundError:
        pass


def running_cluster(home: Path, holding_lock: bool = False) -> ClusterFile:
    """The live cluster in ``home``, or ``ClusterNotRunning`` (cleaning a stale file, and saying so).

    The home's lock decides, not the file: while a live supervisor holds it, its cluster file is never removed
    here (a missing or damaged one is rewritten by that supervisor within a second, which this waits for); only
    when nobody holds the home is a stale or unreadable file cleaned up. ``holding_lock``: the caller (`cbctl up`)
    holds the lock itself, so no supervisor can."""
    cluster = ClusterFile.read(home)
    if cluster is not None and cluster.supervisor_alive():
        return cluster
    holder = None if holding_lock else home_holder(home)
    if holder is not None:
        return _wait_for_repaired_file(home, holder)
    if cluster is None:
        if home.exists() and not home.is_dir():
            raise ClusterNotRunning(f"the cluster directory {home} is a file: point CBCTL_HOME or --home at the "
                                    "directory a cluster was started in")
        if (home / CLUSTER_FILE).exists():
            remove_cluster_file(home)
            raise ClusterNotRunning(
                f"the cluster file in {home} was unreadable and has been removed: start a cluster with `cbctl up`"
            )
        raise ClusterNotRunning(f"no cluster is running in {home}: start one with `cbctl up`")
    if not cluster.is_local():
        return cluster  # the head's file, copied here: its pids are another machine's, its TCP addresses tell
    if not cluster.supervisor_alive():
        cleanup_stale(home, cluster)
        raise ClusterNotRunning(
            f"the cluster in {home} had crashed (supervisor pid {cluster.supervisor_pid} is gone); "
            "its stale cluster file was cleaned up: start a new one with `cbctl up`"
        )
    return cluster


def _wait_for_repaired_file(home: Path, holder: int) -> ClusterFile:
    """A live process holds the home but the cluster file is missing, damaged or names a dead supervisor: the
    supervisor rewrites it about once a second (or `cbctl up` is still starting it). Wait that long, no more."""
    deadline = time.monotonic() + CLUSTER_FILE_REPAIR_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.05)
        cluster = ClusterFile.read(home)
        if cluster is not None and cluster.supervisor_alive():
            return cluster
        if home_holder(home) is None:
            break
    raise ClusterNotRunning(
        f"the cluster file in {home} is missing or damaged, and pid {holder}, which holds the home, did not "
        f"rewrite it within {CLUSTER_FILE_REPAIR_WAIT_S:.0f} s: if `cbctl up` is still starting, wait for it; "
        f"else stop that process with `kill -TERM {holder}` (the file was left as it is)")


def cleanup_stale(home: Path, cluster: ClusterFile) -> None:
    """Kill what is left of a crashed cluster's children and remove its cluster file."""
    import psutil

    killed = []
    for entry in cluster.processes:
        if entry.host:
            continue  # another machine's process: its pid means nothing here
        try:
            proc = psutil.Process(entry.pid)
            if abs(proc.create_time() - entry.started_at) < 2.0:
                proc.kill()
                killed.append(proc)
        except psutil.Error:
            pass
    # gone before this returns: a `cbctl up` right after must not meet an orphan still holding the store's
    # log or a socket path (SIGKILL takes milliseconds; the bound is for a process stuck in the kernel)
    psutil.wait_procs(killed, timeout=STALE_KILL_WAIT_S)
    remove_cluster_file(home)
    remove_socket_dir(home, cluster.control_address)
