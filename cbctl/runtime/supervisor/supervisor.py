"""The supervisor: starts every process of a cluster, restarts the ones that die, stops them in order.

Children fork from a forkserver that has imported the runtime once. On ipc (the default) every role starts
at once, since each address is known before it is bound; on TCP the order is store, then schedulers, then
executors, each stage waiting for the ports of the one before. The cluster file is written only once
everything is ready. The loop then serves control requests
(status, stop, scale) and watches children: a dead child is restarted on the same address after a
backoff that doubles per consecutive crash, up to a limit per minute, after which it is left failed.
A child that exits cleanly without being asked to (someone sent it SIGTERM) is restarted the same way:
the cluster stays whole, and only `cbctl down` (or SIGTERM/SIGINT to the supervisor) takes it down.
Shutdown drains executors first (they finish their queues), then stops schedulers, then the store
(which flushes its log).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

import cbctl
from cbctl.errors import ProtocolError
from cbctl.runtime import cluster, home_lock
from cbctl.runtime.defaults import (
    CLUSTER_FILE_CHECK_S,
    EXECUTOR_RECYCLE_EXIT_CODE,
    MAX_EXECUTORS,
    NODE_HEARTBEAT_S,
    NODE_LOST_AFTER_S,
    POLICY_PLACEMENT,
    RESTART_BACKOFF_FIRST_S,
    RESTART_BACKOFF_MAX_S,
    RESTARTS_PER_MINUTE,
    SHARED_MEMORY_SWEEP_S,
    SHUTDOWN_TIMEOUT_S,
    STARTUP_FAILED_STOP_S,
    STARTUP_TIMEOUT_S,
)
from cbctl.runtime.process import (
    ProcessConfig,
    RejectedFrameLog,
    ShutdownFlag,
    TimerWork,
    drain,
    new_socket,
    process_alive,
)
from cbctl.runtime.redis_store import url as redis_url
from cbctl.runtime.supervisor import scaling
from cbctl.runtime.supervisor.autoscaler import AutoscaleSettings
from cbctl.runtime.supervisor.autoscaling import AutoscaleControl
from cbctl.runtime.supervisor.child import Child
from cbctl.runtime.supervisor.forkserver import run_role, start_forkserver
from cbctl.runtime.supervisor.nodes import NodeTable
from cbctl.runtime.supervisor.spec import ClusterSpec
from cbctl.runtime.wire import auth, limits, shared
from cbctl.runtime.wire.messages import (
    START_BY,
    AutoscaleMode,
    ControlResponse,
    ExecutorLost,
    LoadReport,
    Message,
    NodeAck,
    NodeHeartbeat,
    ProcessReady,
    SupervisorRequest,
    unpack,
    version_refusal,
)

log = logging.getLogger(__name__)
rejected = RejectedFrameLog(log)  # warnings about frames this process drops, rate-limited

STARTUP_ERROR_FILE = cluster.STARTUP_ERROR_FILE


class StartupError(Exception):
    pass


class Supervisor:
    def __init__(self, home: Path, spec: ClusterSpec) -> None:
        self.home = home
        self.spec = spec
        # forkserver, not spawn: one server process imports cbctl's runtime once and every child (and every
        # restart) is forked from it in milliseconds instead of starting an interpreter and importing it all again
        # (about 0.4 s of CPU each); the server has no threads or zmq context, so forking it is safe
        self.mp = start_forkserver()  # started already by the entry point (__main__), so a no-op then
        self.context = auth.new_context(auth.load_keys(home) if spec.curve else None)
        #: unix times of the start-up steps, for the cluster file (`cbctl up --verbose` shows them)
        self.startup: dict[str, float] = {}
        self.children: dict[str, Child] = {}
        self.shutdown = ShutdownFlag()
        self.timers = TimerWork(log)
        self.started_at = time.time()
        self.ready_sock = new_socket(self.context, zmq.PULL)
        self.ready_address = cluster.ipc_address(home, "supervisor-ready")
        self.ready_sock.bind(self.ready_address)
        self.control_sock = new_socket(self.context, zmq.ROUTER)
        self.control_sock.setsockopt(zmq.MAXMSGSIZE, limits.backstop_bytes(spec.max_message_bytes))
        if spec.listen:
            self.control_address = auth.bind_to_random_port(self.control_sock, spec.listen)
        else:
            self.control_address = cluster.ipc_address(home, "supervisor-control")
            self.control_sock.bind(self.control_address)
        self.protocol_errors = 0
        self._ps: dict[int, psutil.Process] = {}  # by pid, for CPU% in status()
        self.scaling: scaling.ScaleOperation | None = None  # a `cbctl scale` under way
        self.highest_executor_index = -1  # executor indices are never reused (see scaling.py)
        self.scheduler_socks: list[zmq.Socket] = []  # DEALERs to the schedulers, for ExecutorLost
        self.cluster_file_unwritable = False  # said once in the log (see _repair_cluster_file)
        self.autoscale: AutoscaleControl | None = None  # `--autoscale MIN:MAX` / `cbctl autoscale` (autoscaling.py)
        # the host this supervisor's executors are on, as ids and `cbctl top` name it; and the joined hosts
        self.host = spec.listen.removeprefix("tcp://").strip("[]") if spec.listen else socket.gethostname()
        self.nodes = NodeTable(NODE_LOST_AFTER_S, self.host)

    # --- start ---------------------------------------------------------------------------------------

    def _new_child(self, role: str, index: int, options: dict[str, Any] | None = None) -> Child:
        config = ProcessConfig(
            home=str(self.home), role=role, index=index, supervisor_address=self.ready_address,
            store_address=self.store_address(secret=True),
            scheduler_addresses=[c.address for c in self.children.values() if c.config.role == "scheduler"],
            listen=self.spec.listen, curve=self.spec.curve,
            options={limits.OPTION: self.spec.max_message_bytes, **(options or {})},
        )
        if role == "scheduler" and index == 0 and self.spec.scheduler_port:
            config.bind_address = f"{self.spec.listen}:{self.spec.scheduler_port}"  # `--listen tcp://HOST:PORT`
        child = Child(config)
        self.children[config.name] = child
        return child

    def store_address(self, secret: bool) -> str:
        """Where the store is: the store process's address, or the Redis URL (with its password for children,
        which get it through the forkserver's pipe, never a file or a command line; redacted for the cluster
        file)."""
        if self.spec.store:
            return redis_url.resolve_address(self.home, self.spec.store) if secret else self.spec.store
        store = self.children.get("store-0")
        return store.address if store else ""

    def _spawn(self, child: Child) -> None:
        child.process = self.mp.Process(target=run_role, args=(child.config,), name=child.config.name)
        child.process.start()
        child.pid = child.process.pid
        child.started_at = time.time()
        child.state = "starting"

    def _wait_ready(self, names: list[str], timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while any(self.children[n].state != "ready" for n in names):
            if self.shutdown.requested or self.owner_gone():
                raise StartupError("interrupted while starting")
            if time.monotonic() > deadline:
                late = [n for n in names if self.children[n].state != "ready"]
                raise StartupError(f"{', '.join(late)} did not report ready within {timeout_s:.0f} s")
            for name in names:
                child = self.children[name]
                if child.state == "starting" and not child.process.is_alive():
                    raise StartupError(f"{name} exited with code {child.process.exitcode} while starting: "
                                       f"see {cluster.log_path(self.home, child.config.role, child.config.index)}")
            if self.ready_sock.poll(100):
                self._on_ready_frames()
            for name in names:
                if self.children[name].error:
                    raise StartupError(f"{name} could not start: {self.children[name].error}")

    def _on_ready_frames(self) -> bool:
        """Handle what came on the ready socket: processes reporting ready (True if any did), and the
        schedulers' load reports."""
        readied = False
        for parts in drain(self.ready_sock):
            try:
                ready = unpack(parts[-1])
            except ProtocolError as exc:
                self.protocol_errors += 1
                rejected.warning("dropped a bad frame on the ready socket: %s", exc)
                continue
            if isinstance(ready, LoadReport):
                if self.autoscale is not None:
                    self.autoscale.on_report(ready)
                continue
            if not isinstance(ready, ProcessReady):
                continue
            child = self.children.get(f"{ready.role}-{ready.index}")
            if child is None or child.pid != ready.pid:
                continue
            if ready.error:
                child.error = ready.error
                continue
            child.address = ready.address
            child.config.bind_address = ready.address  # restarts keep the address peers know
            child.state = "ready"
            readied = True
            log.info("%s ready (pid %d) at %s", child.config.name, ready.pid, ready.address)
        return readied

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        spec = self.spec
        # On ipc every address is known before its process binds it, so every role starts at once: each
        # interpreter's start-up overlaps the others' (about 0.4 s each), and a process whose peer is not bound
        # yet just has its first frames queued by zmq until it is. On TCP the ports are picked at bind time, so
        # each role waits for the addresses of the roles before it.
        known = not spec.listen
        if not spec.store:  # on Redis there is no store process: every role talks to Redis directly
            store = self._new_child("store", 0, {"durability": spec.durability, "salvage": spec.salvage,
                                                 "max_trigger_depth": spec.max_trigger_depth})
            self._start_role([store], known)
        may_start = bool(spec.autoscale) and spec.autoscale[1] > 0  # a CPU call with no executor waits for one
        schedulers = [self._new_child("scheduler", i, {"policy": spec.policy, "autoscale": may_start})
                      for i in range(spec.schedulers)]
        self._start_role(schedulers, known)
        if spec.store:  # Redis fires no triggers: a relay watches the trigger prefixes' pushes
            self._start_role([self._new_child("triggers", 0, {"max_trigger_depth": spec.max_trigger_depth})],
                             known)
        executors = [self._new_executor(i, "cpu") for i in range(spec.executors)]
        executors += [self._new_executor(spec.executors + i, "gpu", device=i) for i in range(spec.gpu_executors)]
        self._start_role(executors, known)
        self.startup["children_forked"] = time.time()
        if known:
            self._wait_ready(list(self.children))
        self.startup["children_ready"] = time.time()
        self.write_cluster_file()
        if spec.autoscale:
            self.autoscale = AutoscaleControl(self, spec.autoscale[0], spec.autoscale[1],
                                              AutoscaleSettings.from_options(spec.autoscale_policy),
                                              nodes=self.nodes, home=self.host)
            log.info("autoscaling %d:%d CPU executors", *spec.autoscale)

    def _start_role(self, children: list[Child], addresses_known: bool) -> None:
        for child in children:
            if addresses_known:
                child.address = cluster.ipc_address(self.home, child.config.name)  # what ProcessConfig.bind uses
            self._spawn(child)
        if not addresses_known:
            self._wait_ready([c.config.name for c in children])

    def _new_executor(self, index: int, executor_type: str, device: int = -1) -> Child:
        options: dict[str, Any] = {"executor_type": executor_type, "cache_mb": self.spec.cache_mb,
                                   "max_batch": self.spec.max_batch,
                                   "max_continuations": self.spec.max_continuations,
                                   "memory_limit_mb": self.spec.executor_memory_mb,
                                   # load reports serve placement by outstanding work only (placement.py)
                                   "load_reports": self.spec.policy.get("placement", POLICY_PLACEMENT) != "cloudburst"}
        if executor_type == "gpu":
            # set before user code runs in the child, so frameworks see exactly one device
            options["env"] = {"CUDA_VISIBLE_DEVICES": str(device)}
            options["device"] = device
            options["fake_gpu"] = self.spec.fake_gpus > 0
        return self._new_child("executor", index, options)

    def start_executor(self, index: int, executor_type: str) -> Child:
        """Start one more executor (``cbctl scale``); it reports ready like any child."""
        child = self._new_executor(index, executor_type)
        self._spawn(child)
        return child

    def write_cluster_file(self) -> None:
        me = psutil.Process()
        entries = [
            cluster.ProcessEntry(c.config.role, c.config.index, c.pid, c.address, c.started_at, c.restarts,
                                 c.config.options.get("executor_type", ""))
            for c in self.children.values() if c.state != "stopped"
        ] + self.nodes.process_entries()
        cluster.ClusterFile(
            home=str(self.home), supervisor_pid=me.pid, supervisor_create_time=me.create_time(),
            control_address=self.control_address, store_address=self.store_address(secret=False),
            scheduler_addresses=[c.address for c in self.children.values() if c.config.role == "scheduler"],
            started_at=self.started_at, version=cbctl.__version__, processes=entries,
            max_message_bytes=self.spec.max_message_bytes,
            auth=auth.AUTH_CURVE if self.spec.curve else auth.AUTH_NONE,
            departure_timeout_s=self.spec.departure_timeout_s,
            pid_space=cluster.pid_space(), head_host=self.host,
            startup={**self.startup, "cluster_file": time.time()},
        ).write(self.home)

    # --- run -----------------------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.ready_sock, zmq.POLLIN)
        poller.register(self.control_sock, zmq.POLLIN)
        next_file_check = time.monotonic() + CLUSTER_FILE_CHECK_S
        next_sweep = time.monotonic() + SHARED_MEMORY_SWEEP_S
        while not self.shutdown.requested:
            if self.owner_gone():
                log.warning("the process that owns this cluster (pid %d) is gone: stopping", self.spec.owner_pid)
                break
            events = dict(poller.poll(100))
            if time.monotonic() >= next_file_check:
                next_file_check = time.monotonic() + CLUSTER_FILE_CHECK_S
                self._repair_cluster_file()
            if self.ready_sock in events and self._on_ready_frames():
                self.write_cluster_file()
            if self.control_sock in events:
                self._on_control_frames()
            self.timers.run(self._watch_children)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SHARED_MEMORY_SWEEP_S
                self.timers.run(shared.sweep, process_alive)  # values lent by processes that died (shared.py)
            if self.nodes.nodes:
                self.timers.run(self._watch_nodes)
            if self.scaling is not None:
                self.timers.run(self._advance_scale)
            if self.autoscale is not None and time.monotonic() >= self.autoscale.next_step:
                self.timers.run(self.autoscale.step)
        self.stop()

    def _repair_cluster_file(self) -> None:
        """Rewrite the cluster file if someone removed, truncated or replaced it: every command finds the
        cluster through it, and while this process holds the home's lock no command deletes it or starts
        another cluster here, so without this the cluster would be unreachable until it is stopped by pid."""
        found = cluster.ClusterFile.read(self.home)
        if found is None or found.supervisor_pid != os.getpid():
            try:
                self.write_cluster_file()
            except OSError as exc:
                # the home itself is gone or read-only: the cluster serves on, and `kill -TERM` still stops it
                # (an exception out of the loop would leave this process waiting on its children for ever)
                if not self.cluster_file_unwritable:
                    log.error("the cluster file %s is missing or damaged and cannot be rewritten: %s",
                              self.home / cluster.CLUSTER_FILE, exc)
                self.cluster_file_unwritable = True
                return
            self.cluster_file_unwritable = False
            log.warning("the cluster file %s was missing or damaged: rewrote it", self.home / cluster.CLUSTER_FILE)
    def owner_gone(self) -> bool:
        """Whether the owner (``ClusterSpec.owner_pid``), this process's parent, exited: an orphan is
        re-parented, so the parent pid changes (one cheap syscall, no pid that could be reused)."""
        return bool(self.spec.owner_pid) and os.getppid() != self.spec.owner_pid

    def _watch_children(self) -> None:
        now = time.time()
        changed = False
        for child in self.children.values():
            if child.state in ("ready", "starting") and not child.process.is_alive():
                code = child.process.exitcode
                if code == EXECUTOR_RECYCLE_EXIT_CODE and child.config.role == "executor":
                    # it left gracefully (its calls finished or went to its heir): a fresh one now, no backoff
                    child.recycles += 1
                    child.state, child.restart_at = "restarting", now
                    log.info("%s (pid %d) recycled: its memory was over --executor-memory-mb %d after a call",
                             child.config.name, child.pid, self.spec.executor_memory_mb)
                    continue
                child.crash_times.append(now)
                recent = sum(1 for t in child.crash_times if now - t < 60)
                if recent > RESTARTS_PER_MINUTE:
                    child.state = "failed"
                    log.error("%s died %d times in a minute: not restarting it", child.config.name, recent)
                    if child.config.role == "executor":  # its calls still go elsewhere
                        self.tell_schedulers(ExecutorLost(self.executor_id(child), child.address, child.pid,
                                                           f"exited with code {code}, not restarted"))
                    continue
                if now - child.started_at > 30:
                    child.backoff = RESTART_BACKOFF_FIRST_S
                child.state = "restarting"
                child.restart_at = now + child.backoff
                log.warning("%s (pid %d) exited with code %s: restarting in %.1f s",
                            child.config.name, child.pid, code, child.backoff)
                if child.config.role == "executor":
                    self.tell_schedulers(ExecutorLost(self.executor_id(child), child.address, child.pid,
                                                       f"exited with code {code}"))
                child.backoff = min(child.backoff * 2, RESTART_BACKOFF_MAX_S)
            elif child.state == "restarting" and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
                changed = True
        if changed:
            self.write_cluster_file()

    def scheduler_addresses(self) -> list[str]:
        return [c.address for c in self.children.values() if c.config.role == "scheduler" and c.address]

    def executor_id(self, child: Child) -> str:
        """The id an executor child goes by (``executor-N`` on the head)."""
        return child.config.name

    def _watch_nodes(self) -> None:
        """Timer work: a joined host silent past ``NODE_LOST_AFTER_S`` is lost, and so is every executor on it."""
        gone = self.nodes.expire(time.monotonic())
        for host, lost in gone:
            log.warning("host %s sent no heartbeat for %.0f s: lost, with its %d executor(s)", host,
                        NODE_LOST_AFTER_S, len(lost))
            for message in lost:
                self.tell_schedulers(message)
        if gone:
            self.write_cluster_file()

    def _on_heartbeat(self, envelope: list[bytes], beat: NodeHeartbeat) -> None:
        known = beat.host in self.nodes.nodes
        try:
            verdict = self.nodes.on_heartbeat(beat, time.monotonic())
        except (ValueError, TypeError) as exc:
            self.protocol_errors += 1
            rejected.warning("dropped a malformed heartbeat from %s: %s", beat.host, exc)
            return
        for message in verdict.lost:
            self.tell_schedulers(message)
        if verdict.changed:
            self.write_cluster_file()
            if beat.leaving:
                log.info("host %s left", beat.host)
            elif not known:
                log.info("host %s joined (node supervisor pid %d)", beat.host, beat.node_pid)
        file_text = (self.home / cluster.CLUSTER_FILE).read_text() if verdict.accepted else ""
        # the autoscaler's share for this host (-1: keep what it runs); the autoscaler alone decides it
        share = self.autoscale.share_of(beat.host) if self.autoscale is not None and verdict.accepted else -1
        reply = NodeAck(beat.seq, verdict.accepted, verdict.reason, file_text, share)
        self.control_sock.send_multipart([*envelope, reply.pack()])

    def tell_schedulers(self, message: Message) -> None:
        """At once, not with the next status interval: the calls that the dead executor held are dispatched
        again by the schedulers (see retries.py). A scheduler that is down misses it; it checks the pids of
        the executors it knows on its timer as well."""
        if not self.scheduler_socks:
            for address in self.scheduler_addresses():
                sock = new_socket(self.context, zmq.DEALER)
                auth.connect(sock, address)  # with the cluster's keys on TCP, or CURVE refuses it
                self.scheduler_socks.append(sock)
        frame = message.pack()
        for sock in self.scheduler_socks:
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                pass  # that scheduler is not reading: its own pid check finds the loss

    def _on_control_frames(self) -> None:
        for parts in drain(self.control_sock):
            try:
                request = unpack(parts[-1])
                if isinstance(request, NodeHeartbeat):
                    self._on_heartbeat(parts[:-1], request)
                    continue
                if not isinstance(request, SupervisorRequest):
                    raise ProtocolError(f"the supervisor does not serve {type(request).__name__}")
            except ProtocolError as exc:
                self.protocol_errors += 1
                rejected.warning("dropped a bad control frame: %s", exc)
                refusal = version_refusal(parts[-1], "the supervisor")  # a peer of another version is told why
                if refusal is not None:
                    self.control_sock.send_multipart([*parts[:-1], refusal])
                continue
            start_by = request.arguments.get(START_BY)
            if isinstance(start_by, (int, float)) and time.time() > start_by:
                # its sender stopped waiting (this process was stopped, or far behind): acting now would surprise
                log.warning("ignored a %r request that came %.1f s past the time its sender waited for",
                            request.command, time.time() - start_by)
                continue
            if request.command == "scale":
                self._begin_scale(parts[:-1], request)  # answered once the executors are up or gone
                continue
            if request.command == "autoscale":
                try:
                    reply = ControlResponse(request.req_id, True, self.set_autoscale(request.arguments))
                except Exception as exc:
                    reply = ControlResponse(request.req_id, False, None, "InvalidArgument", str(exc))
                self.control_sock.send_multipart([*parts[:-1], reply.pack()])
                continue
            try:
                payload = self._control(request)
                reply = ControlResponse(request.req_id, True, payload)
            except Exception as exc:
                reply = ControlResponse(request.req_id, False, None, "InvalidArgument", str(exc))
            self.control_sock.send_multipart([*parts[:-1], reply.pack()])

    def _control(self, request: SupervisorRequest) -> Any:
        if request.command == "status":
            return self.status()
        if request.command == "stop":
            self.shutdown.requested = True
            return {"stopping": True}
        raise ValueError(f"unknown supervisor command {request.command!r}")

    def _begin_scale(self, envelope: list[bytes], request: SupervisorRequest) -> None:
        try:
            if self.scaling is not None:
                raise ValueError("another `cbctl scale` is under way: wait for it to finish")
            if self.autoscale is not None and self.autoscale.enabled:
                low, high = self.autoscale.autoscaler.minimum, self.autoscale.autoscaler.maximum
                raise ValueError(f"the cluster autoscales ({low}:{high} CPU executors): turn it off first with "
                                 "`cbctl autoscale off`, or set the range with `cbctl autoscale MIN:MAX`")
            self.scaling = scaling.begin(self, envelope, request.req_id, request.arguments)
        except Exception as exc:
            reply = ControlResponse(request.req_id, False, None, "InvalidArgument", str(exc))
            self.control_sock.send_multipart([*envelope, reply.pack()])
            return
        self._advance_scale()

    def _advance_scale(self) -> None:
        assert self.scaling is not None
        reply = scaling.advance(self, self.scaling)
        if reply is not None:
            self.control_sock.send_multipart([*self.scaling.envelope, reply.pack()])
            self.scaling = None

    def set_autoscale(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """`cbctl autoscale MIN:MAX` (``range``: [MIN, MAX], ``policy``: autoscale settings) or `... off`
        (``range``: None; ``executors``: the fixed size to keep, default the current one)."""
        span = arguments.get("range")
        gpus = sum(1 for c in self.children.values() if c.config.role == "executor"
                   and c.config.options.get("executor_type") == "gpu" and c.state in scaling.ACTIVE_STATES)
        if span is None:
            if self.autoscale is None or not self.autoscale.enabled:
                raise ValueError("the cluster does not autoscale: nothing to turn off")
            fixed = arguments.get("executors")
            current = len(self.autoscale.active())
            fixed = max(current, 0 if gpus else 1) if fixed is None else fixed
            if isinstance(fixed, bool) or not isinstance(fixed, int) or not 0 <= fixed <= MAX_EXECUTORS \
                    or fixed + gpus < 1:
                raise ValueError(f"--executors must be a whole number from {0 if gpus else 1} to "
                                 f"{MAX_EXECUTORS}, not {fixed!r}")
            self.autoscale.disable(fixed)
            self.spec.autoscale = []
            self._announce_autoscale(False)
            log.info("autoscaling off: %d CPU executors, fixed", fixed)
            return self.autoscale_status()
        if self.scaling is not None:
            raise ValueError("a `cbctl scale` is under way: wait for it to finish")
        low, high = span
        settings = AutoscaleSettings.from_options(arguments.get("policy") or self.spec.autoscale_policy)
        if high + gpus < 1:
            raise ValueError("MAX 0 with no GPU executor would leave nothing to run calls: pass MAX >= 1")
        if self.autoscale is not None and self.autoscale.enabled:
            self.autoscale.autoscaler.settings = settings
            self.autoscale.set_range(low, high)
        else:
            self.autoscale = AutoscaleControl(self, low, high, settings, departing=self.autoscale,
                                              nodes=self.nodes, home=self.host)
        self.spec.autoscale, self.spec.autoscale_policy = [low, high], settings.as_options()
        self._announce_autoscale(high > 0)
        log.info("autoscaling %d:%d CPU executors", low, high)
        return self.autoscale_status()

    def _announce_autoscale(self, may_start: bool) -> None:
        """Tell the schedulers whether a CPU call with no executor may wait for one (and their restarts)."""
        for child in self.children.values():
            if child.config.role == "scheduler":
                child.config.options["autoscale"] = may_start
        self.tell_schedulers(AutoscaleMode(may_start))

    def autoscale_status(self) -> dict[str, Any]:
        if self.autoscale is None or not self.autoscale.enabled:
            executors = sum(1 for c in self.children.values() if c.config.role == "executor"
                            and c.config.options.get("executor_type", "cpu") == "cpu"
                            and c.state in scaling.ACTIVE_STATES)
            counts = self.autoscale.counts() if self.autoscale is not None else {}
            return {"enabled": False, "executors": executors, **counts}
        return self.autoscale.describe()

    def status(self) -> dict[str, Any]:
        now = time.time()
        processes = []
        for child in self.children.values():
            try:
                # the same Process object across requests: cpu_percent(None) is the CPU since the last call
                # on that object, so a fresh one would always read 0.0
                proc = self._ps.get(child.pid)
                if proc is None:
                    proc = self._ps[child.pid] = psutil.Process(child.pid)
                with proc.oneshot():
                    cpu, rss = proc.cpu_percent(None), proc.memory_info().rss
            except psutil.Error:
                cpu, rss = None, None
            processes.append({
                "name": child.config.name, "role": child.config.role, "index": child.config.index,
                "pid": child.pid, "address": child.address, "state": child.state,
                "uptime_s": round(now - child.started_at, 1) if child.state == "ready" else 0.0,
                "restarts": child.restarts, "recycles": child.recycles,
                "executor_type": child.config.options.get("executor_type", ""),
                "cpu_percent": cpu, "rss_bytes": rss, "host": self.host,
            })
        hosts = self.nodes.status(time.monotonic())
        for node in hosts:  # a joined host's executors, as its last heartbeat listed them (no CPU or memory)
            for e in node["executors"]:
                processes.append({
                    "name": e["name"], "role": "executor", "index": e["index"], "pid": e["pid"],
                    "address": e["address"], "state": e["state"],
                    "uptime_s": round(now - e["started_at"], 1) if e["state"] == "ready" else 0.0,
                    "restarts": e["restarts"], "recycles": 0, "executor_type": e["executor_type"], "cpu_percent": None,
                    "rss_bytes": None, "host": node["host"],
                })
        live = {child.pid for child in self.children.values()}
        self._ps = {pid: proc for pid, proc in self._ps.items() if pid in live}  # forget restarted pids
        return {"home": str(self.home), "uptime_s": round(now - self.started_at, 1),
                "supervisor_pid": os.getpid(), "protocol_errors": self.protocol_errors,
                "processes": processes, "host": self.host,
                "hosts": [{k: v for k, v in node.items() if k != "executors"} for node in hosts],
                "autoscale": self.autoscale_status()}

    # --- stop ----------------------------------------------------------------------------------------

    def stop(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Stop every child in order, each role given ``timeout_s`` to stop warmly before it is killed."""
        log.info("stopping the cluster")
        if self.scaling is not None:
            reply = ControlResponse(self.scaling.req_id, False, None, "CbctlError", "the cluster is stopping")
            self.control_sock.send_multipart([*self.scaling.envelope, reply.pack()])
            self.scaling = None
        self._dismiss_nodes()
        for role in ("executor", "scheduler", "triggers", "store"):
            self._stop_role(role, timeout_s)
        cluster.remove_cluster_file(self.home)
        for sock in self.scheduler_socks:
            sock.close()
        self.ready_sock.close()
        self.control_sock.close()
        self.context.term()
        cluster.remove_socket_dir(self.home)  # every process that used it has stopped
        # the shared memory they lent and nobody took (their pools too): every one of them is gone now
        self.timers.run(shared.sweep, process_alive, None, 0.0)
        log.info("cluster stopped")

    def _dismiss_nodes(self) -> None:
        """Answer each joined host's next heartbeat with "stopping", so its executors depart (gracefully, while
        the schedulers still run) and its node supervisor exits: a stopped head's keys and ports die with it.
        Waits at most two heartbeat intervals; a host that misses it leaves when its heartbeats go unanswered."""
        waiting = set(self.nodes.nodes)
        deadline = time.monotonic() + 2 * NODE_HEARTBEAT_S + 0.2
        while waiting and time.monotonic() < deadline:
            if not self.control_sock.poll(50):
                continue
            for parts in drain(self.control_sock):
                try:
                    beat = unpack(parts[-1])
                except ProtocolError:
                    continue
                if isinstance(beat, NodeHeartbeat):
                    waiting.discard(beat.host)
                    reply = NodeAck(beat.seq, False, "stopping: `cbctl down` on the head", "")
                    self.control_sock.send_multipart([*parts[:-1], reply.pack()])
        if waiting:
            log.warning("joined host(s) %s did not hear that the cluster stops", ", ".join(sorted(waiting)))

    def _stop_role(self, role: str, timeout_s: float) -> None:
        children = [c for c in self.children.values() if c.config.role == role and c.process is not None]
        for child in children:
            # one SIGTERM only: a child already stopping (departed by `cbctl scale`) is finishing its calls, and
            # a second signal is the cold stop that drops them
            if child.state != "stopping" and child.process.is_alive():
                child.process.terminate()
            child.state = "stopping"
        deadline = time.monotonic() + timeout_s
        for child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log.warning("%s did not stop in time: killing it", child.config.name)
                child.process.kill()
                child.process.join(5)
            child.state = "stopped"


def main(argv: list[str] | None = None, startup: dict[str, float] | None = None) -> None:
    """Run the supervisor (``python -m cbctl.runtime.supervisor`` runs it, see ``__main__``); ``startup``: the
    unix times of the entry point's steps before this, for the cluster file."""
    parser = argparse.ArgumentParser(description="cbctl supervisor (started by `cbctl up`)")
    parser.add_argument("--home", required=True)
    parser.add_argument("--spec", required=True, help="ClusterSpec as JSON")
    parser.add_argument("--lock-fd", type=int, default=-1,
                        help="the home's lock, taken by `cbctl up` (without it, the supervisor takes it itself)")
    parser.add_argument("--ready-fd", type=int, default=-1,
                        help="a pipe to write a line to once the cluster file is written (`cbctl up` waits on it)")
    args = parser.parse_args(argv)
    home = Path(args.home)
    spec = ClusterSpec(**json.loads(args.spec))
    config = ProcessConfig(home=str(home), role="supervisor", index=0, supervisor_address="")
    from cbctl.runtime.process import setup_logging

    os.umask(cluster.PRIVATE_UMASK)  # `cbctl up` sets it already; a supervisor started otherwise is private too
    # Held for this process's whole life (never closed: the kernel drops it when we exit, however we exit), and
    # not inherited by anything we start, so a crashed supervisor's orphans do not keep the home claimed.
    if args.lock_fd >= 0:
        lock_fd = args.lock_fd
        home_lock.write_pid(lock_fd, os.getpid())
    else:
        try:
            lock_fd = home_lock.acquire(cluster.lock_path(home))
        except home_lock.LockHeld as held:
            sys.exit(f"a cluster is already running in {home} (supervisor pid {held.pid})")
    os.set_inheritable(lock_fd, False)
    if args.ready_fd >= 0:
        os.set_inheritable(args.ready_fd, False)  # this process's exit must end the pipe: no child keeps a copy
    setup_logging(config)
    (home / STARTUP_ERROR_FILE).unlink(missing_ok=True)
    try:
        supervisor = Supervisor(home, spec)
        supervisor.startup.update(startup or {})
    except Exception as exc:  # e.g. its control socket cannot bind: `cbctl up` shows this file's text
        log.exception("start failed")
        (home / STARTUP_ERROR_FILE).write_text(str(exc))
        sys.exit(1)
    try:
        supervisor.start()
    except Exception as exc:
        log.error("start failed: %s", exc)
        (home / STARTUP_ERROR_FILE).write_text(str(exc))
        # nothing ran yet, so there is nothing to drain: a child waiting on a peer that failed (an executor
        # on a store that could not open its data) must not hold `cbctl up`'s error back for the warm timeout
        supervisor.stop(timeout_s=STARTUP_FAILED_STOP_S)
        sys.exit(1)
    if args.ready_fd >= 0:
        say_ready(args.ready_fd)
    supervisor.run()


def say_ready(fd: int) -> None:
    """Tell whoever started this process, on the pipe ``fd``, that the cluster file is written; it may be gone."""
    try:
        os.write(fd, b"ready\n")
    except OSError:  # `cbctl up` was interrupted, or a cbctl.local() owner stopped waiting: nobody to tell
        pass
    os.close(fd)


