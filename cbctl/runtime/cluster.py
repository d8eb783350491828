"""The cluster directory: where a cluster's files live, and the cluster file that says it is up.

``$CBCTL_HOME`` holds ``cluster.json`` (written by the supervisor once every child is ready), ``data/``
(the store's log and snapshots), ``logs/`` (one file per process) and ``sock/`` (ipc sockets). When the
home path is too long for an ipc socket path, the sockets go to a short directory under the system temp
directory named by a hash of the home, so two homes never share sockets.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from cbctl.errors import ClusterNotRunning
from cbctl.runtime.defaults import DEFAULT_HOME, MAX_IPC_PATH, STALE_KILL_WAIT_S

CLUSTER_FILE = "cluster.json"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The cluster directory: the argument, else $CBCTL_HOME, else ~/.cbctl (absolute, not created)."""
    raw = home if home is not None else os.environ.get("CBCTL_HOME") or DEFAULT_HOME
    return Path(raw).expanduser().resolve()


def socket_dir(home: Path) -> Path:
    candidate = home / "sock"
    if len(str(candidate)) + 24 <= MAX_IPC_PATH:
        return candidate
    digest = hashlib.sha1(str(home).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"cbctl-{digest}"


def ipc_address(home: Path, name: str) -> str:
    return f"ipc://{socket_dir(home) / name}"


def log_path(home: Path, role: str, index: int) -> Path:
    return home / "logs" / f"{role}-{index}.log"


def data_dir(home: Path) -> Path:
    return home / "data"


@dataclass
class ProcessEntry:
    role: str
    index: int
    pid: int
    address: str
    started_at: float
    restarts: int = 0
    executor_type: str = ""


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

    def write(self, home: Path) -> None:
        tmp = home / (CLUSTER_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, home / CLUSTER_FILE)

    @classmethod
    def read(cls, home: Path) -> ClusterFile | None:
        try:
            raw: dict[str, Any] = json.loads((home / CLUSTER_FILE).read_text())
            raw["processes"] = [ProcessEntry(**p) for p in raw.get("processes", [])]
            return cls(**raw)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ValueError, TypeError):
            return None  # a half-written or foreign file: treated as stale by callers

    def pids(self) -> list[int]:
        """The supervisor's pid, then every child's."""
        return [self.supervisor_pid] + [p.pid for p in self.processes]

    def supervisor_alive(self) -> bool:
        try:
            proc = psutil.Process(self.supervisor_pid)
            # pid reuse: the same pid started at another time is another process. A zombie is dead too: the
            # detached supervisor's parent is init, which (in containers especially) may reap it late.
            return (abs(proc.create_time() - self.supervisor_create_time) < 1.0 and proc.is_running()
                    and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False


def remove_cluster_file(home: Path) -> None:
    try:
        (home / CLUSTER_FILE).unlink()
    except FileNotFoundError:
        pass


def running_cluster(home: Path) -> ClusterFile:
    """The live cluster in ``home``, or ``ClusterNotRunning`` (cleaning a stale file, and saying so)."""
    cluster = ClusterFile.read(home)
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
    if not cluster.supervisor_alive():
        cleanup_stale(home, cluster)
        raise ClusterNotRunning(
            f"the cluster in {home} had crashed (supervisor pid {cluster.supervisor_pid} is gone); "
            "its stale cluster file was cleaned up: start a new one with `cbctl up`"
        )
    return cluster


def cleanup_stale(home: Path, cluster: ClusterFile) -> None:
    """Kill what is left of a crashed cluster's children and remove its cluster file."""
    killed = []
    for entry in cluster.processes:
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
