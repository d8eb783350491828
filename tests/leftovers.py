"""Finding what tests started, by pid, so that teardown can stop it whatever failed: the processes of a
cluster home, and the processes and files a whole test session left behind.

A cluster's processes are found without its cluster file (which a failed or half-done `cbctl up` never wrote):
the detached supervisor names its home on its command line (``--home HOME``), every process `cbctl up` started
inherits the ``CBCTL_HOME`` the tests run it with, and the supervisor's descendants are its children.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import psutil

from cbctl.lifecycle import wait_gone
from cbctl.runtime.cluster import ClusterFile


def _under(text: str, roots: tuple[str, ...]) -> bool:
    return any(text == root or text.startswith(root + os.sep) for root in roots)


def _names_a_root(proc: psutil.Process, roots: tuple[str, ...], env_marks: dict[str, str]) -> bool:
    try:
        cmdline = proc.cmdline()
        if any(_under(arg, roots) or _under(arg.partition("=")[2], roots) for arg in cmdline):  # also --home=X
            return True
        environ = proc.environ()
    except (psutil.Error, OSError):
        return False
    home = environ.get("CBCTL_HOME")
    if home is not None and _under(home, roots):
        return True
    return any(environ.get(name) == value for name, value in env_marks.items())


def processes_naming(roots: Iterable[Path], env_marks: dict[str, str] | None = None) -> list[psutil.Process]:
    """Running processes, other than this one and its ancestors, whose command line names a path under one of
    ``roots``, whose ``CBCTL_HOME`` is under one, or whose environment has one of ``env_marks``; and all their
    descendants. Zombies count as gone."""
    texts = {str(root) for root in roots} | {str(Path(root).resolve()) for root in roots}
    root_texts = tuple(sorted(texts))
    excluded = {os.getpid()} | {p.pid for p in psutil.Process().parents()}
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        if proc.pid in excluded or proc.pid in found or not _names_a_root(proc, root_texts, env_marks or {}):
            continue
        found[proc.pid] = proc
        try:
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            pass
    return [proc for proc in found.values() if proc.pid not in excluded and _alive(proc)]


def cluster_processes(found: ClusterFile) -> list[psutil.Process]:
    """The processes a cluster file names that still run, each checked by its start time (a stale file's pid
    may belong to another process by now)."""
    started = [(found.supervisor_pid, found.supervisor_create_time, 1.0)]
    started += [(entry.pid, entry.started_at, 2.0) for entry in found.processes]  # as cleanup_stale checks them
    procs = []
    for pid, at, slack in started:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - at) < slack:
                procs.append(proc)
        except psutil.Error:
            pass
    return procs


def kill_all(procs: Iterable[psutil.Process], timeout_s: float = 10.0) -> list[psutil.Process]:
    """SIGKILL each process (by pid, checked against its start time by psutil) and wait until it is gone;
    returns those still there at the deadline."""
    procs = list(procs)
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return wait_gone(procs, timeout_s)


def describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid} (gone)"


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
