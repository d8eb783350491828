"""``cbctl.local()``: a whole cluster for the life of a ``with`` block, as Dask's ``LocalCluster`` or
``ray.init()`` give one, for notebooks, scripts and test suites.

It starts the cluster as ``cbctl up`` does (the same checks and spec: ``lifecycle.plan_up``) in a private
temporary home, and owns it: every process the cluster runs is a descendant of the supervisor this process
started, and is found by pid (psutil, which also refuses a pid that was reused), so on the way out, warm
first, then by SIGKILL for whatever did not stop, none is left behind. The way out is the block's end, an
exception or Ctrl-C in it, and, for a cluster whose block is never left (a notebook that entered it by hand,
a script that ends inside it), the interpreter's exit (atexit). Should this process die without running
atexit (SIGKILL, ``os._exit``), the supervisor sees its owner gone and stops the cluster itself.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psutil

from cbctl import lifecycle
from cbctl.errors import CbctlError, ClusterNotRunning
from cbctl.runtime import cluster
from cbctl.runtime.defaults import (
    MAX_BATCH,
    MAX_CONTINUATIONS,
    MAX_MESSAGE_BYTES,
    MAX_TRIGGER_DEPTH,
    SHUTDOWN_TIMEOUT_S,
)

if TYPE_CHECKING:
    from cbctl.client import Client

log = logging.getLogger(__name__)

#: How long ``close()`` waits for SIGKILLed processes to be gone (the kernel frees them in milliseconds).
KILL_WAIT_S = 10.0


class LocalCluster:
    """A cluster this process starts and stops: ``start()`` returns a connected ``Client``, ``close()`` stops
    every process and removes the temporary home. ``with cbctl.local(...) as client:`` does both."""

    def __init__(self, home: str | os.PathLike[str] | None, options: dict[str, Any]) -> None:
        self._given_home = Path(home).expanduser() if home is not None else None
        self.home: Path | None = self._given_home
        self.options = options
        self._supervisor: subprocess.Popen | None = None
        self._processes: dict[int, psutil.Process] = {}  # every process of the cluster seen so far, by pid
        self._clients: weakref.WeakSet[Client] = weakref.WeakSet()  # those still open are closed with it
        self._closed = False
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()  # close() from atexit and from a thread at once

    # --- start ---------------------------------------------------------------------------------------

    def start(self) -> Client:
        """Start the cluster and return a client connected to it; returns once every process is ready."""
        if self._supervisor is not None or self._closed:
            raise CbctlError("this cbctl.local() cluster was started already: call cbctl.local() again for "
                             "another one")
        self._owner_pid = os.getpid()
        atexit.register(self.close)
        try:
            if self.home is None:
                self.home = Path(tempfile.mkdtemp(prefix="cbctl-"))  # 0700, short enough for ipc socket paths
            spec, notes = lifecycle.plan_up(self.home, **self.options)
            for note in notes:
                log.warning("%s", note)
            spec.owner_pid = self._owner_pid
            self._supervisor = lifecycle.start_supervisor(self.home, spec)
            self._track(self._supervisor.pid)
            importlib.import_module("cbctl.client")  # its imports (zmq, the messages) while the cluster starts
            lifecycle.wait_for_cluster(self.home, self._supervisor)
            self._track_descendants()
            return self.client()
        except BaseException:  # a bad option, a failed start, Ctrl-C while starting: leave nothing behind
            self.close()
            raise

    def client(self) -> Client:
        """Another client of this cluster (closed by ``close()``)."""
        if self._closed or self.home is None:
            raise ClusterNotRunning("this cbctl.local() cluster is not running: start it with `with "
                                    "cbctl.local() as client:`")
        from cbctl.client import Client

        client = Client(self.home)
        self._clients.add(client)
        return client

    def pids(self) -> list[int]:
        """Every process of the cluster still running: the supervisor and its descendants."""
        self._track_descendants()
        return sorted(pid for pid, proc in self._processes.items() if _alive(proc))

    def _track(self, pid: int) -> None:
        try:
            self._processes.setdefault(pid, psutil.Process(pid))
        except psutil.Error:
            pass

    def _track_descendants(self) -> None:
        """Remember every descendant of the supervisor now: restarted children and the forkserver too; a
        process orphaned later (its parent gone) is then still known by pid."""
        # The supervisor is this process's child: its pid names it until this process reaps it (returncode set),
        # and no longer; the Process object seen at start refuses a pid that names another process since.
        if self._supervisor is None or self._supervisor.returncode is not None:
            return
        supervisor = self._processes.get(self._supervisor.pid)
        try:
            if supervisor is not None:
                for proc in supervisor.children(recursive=True):
                    self._processes.setdefault(proc.pid, proc)
        except psutil.Error:
            pass

    # --- stop ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process of the cluster (warm: executors finish their calls, the store flushes) and
        remove the temporary home; idempotent. Ctrl-C while it waits makes the stop cold (SIGKILL now)."""
        if os.getpid() != self._owner_pid:
            return  # a fork of the owner (its atexit handlers came along): the cluster is the parent's
        with self._lock:
            if self._closed:
                return
            self._closed = True
            atexit.unregister(self.close)
            interrupted = False
            try:
                self._close_clients()
                self._stop_warm()
            except KeyboardInterrupt:
                interrupted = True  # a second Ctrl-C: kill what is left at once, then say so
            finally:
                with _sigint_deferred():
                    self._kill_rest()
                    self._remove_home()
            if interrupted:
                raise KeyboardInterrupt

    def _close_clients(self) -> None:
        for client in list(self._clients):
            try:
                client.close()
            except Exception:  # a client in any state must not keep the cluster running
                log.debug("closing a client failed", exc_info=True)
        self._clients.clear()

    def _stop_warm(self) -> None:
        if self._supervisor is None:
            return
        self._track_descendants()
        if self._supervisor.poll() is None:
            self._supervisor.terminate()  # the supervisor stops its children in order, as `cbctl down` asks it
            try:
                self._supervisor.wait(3 * SHUTDOWN_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:
                log.warning("the cluster in %s did not stop in time: killing it", self.home)

    def _kill_rest(self) -> None:
        self._track_descendants()
        alive = [proc for proc in self._processes.values() if _alive(proc)]
        for proc in alive:
            try:
                proc.kill()  # psutil checks the pid still names the process it saw
            except psutil.Error:
                pass
        left = lifecycle.wait_gone(alive, KILL_WAIT_S)
        if self._supervisor is not None:
            try:
                self._supervisor.wait(KILL_WAIT_S)  # reap it: it is this process's child
            except subprocess.TimeoutExpired:
                pass
        if left:
            log.error("processes %s of the cluster in %s did not exit after SIGKILL",
                      [proc.pid for proc in left], self.home)

    def _remove_home(self) -> None:
        if self.home is None:
            return
        sockets = cluster.socket_dir(self.home)
        if not sockets.is_relative_to(self.home):  # a long home's sockets live in a short directory elsewhere
            shutil.rmtree(sockets, ignore_errors=True)
        if self._given_home is None:
            shutil.rmtree(self.home, ignore_errors=True)
        else:
            cluster.remove_cluster_file(self.home)  # the user's home keeps its data and logs

    # --- context manager -----------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._supervisor is not None else "not started"
        return f"<cbctl.LocalCluster {state} in {self.home}>"


def local(executors: int | None = None, *, home: str | os.PathLike[str] | None = None,
          gpu_executors: int | None = None, schedulers: int = 1, listen: str = "", no_auth: bool = False,
          durability: str = "batch", cache_mb: int = 64, fake_gpus: int = 0, max_batch: int = MAX_BATCH,
          max_continuations: int = MAX_CONTINUATIONS, max_message_mb: int = MAX_MESSAGE_BYTES >> 20,
          policy: Mapping[str, Any] | Iterable[str] = (), max_trigger_depth: int = MAX_TRIGGER_DEPTH,
          executor_memory_mb: int = 0) -> LocalCluster:
    """A cluster for the life of a ``with`` block: ``with cbctl.local(executors=2) as client: ...``.

    The keywords are ``cbctl up``'s options (``executors`` defaults to the CPU count, ``gpu_executors`` to
    the GPUs found; ``policy`` takes ``{"locality": False}`` or ``["locality=false"]``). The cluster lives
    in a private temporary home that is removed afterwards, or in ``home`` (kept, with its logs and data).
    On leaving the block, by an exception or Ctrl-C too, or at the interpreter's exit if the block is never
    left, every process of the cluster is stopped. ``start()``/``close()`` do the same without a block.
    """
    options = {"executors": executors, "gpu_executors": gpu_executors, "schedulers": schedulers,
               "listen": listen, "no_auth": no_auth, "durability": durability, "cache_mb": cache_mb,
               "fake_gpus": fake_gpus, "max_batch": max_batch, "max_continuations": max_continuations,
               "max_message_mb": max_message_mb, "policy": policy, "max_trigger_depth": max_trigger_depth,
               "executor_memory_mb": executor_memory_mb}
    return LocalCluster(home, options)


class _sigint_deferred:
    """Ctrl-C during the last, short step of ``close()`` (SIGKILL and reap) is held until it ends, so it
    cannot leave half of the processes alive; only the main thread can change a signal handler."""

    def __enter__(self) -> None:
        self.installed = threading.current_thread() is threading.main_thread()
        self.received = False
        if self.installed:
            self.previous = signal.signal(signal.SIGINT, self._hold)

    def _hold(self, signum: int, frame: Any) -> None:
        self.received = True

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)
            if self.received and exc[0] is None:
                raise KeyboardInterrupt


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
