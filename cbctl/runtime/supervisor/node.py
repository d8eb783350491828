"""The node supervisor of a joined host (``cbctl join``): starts executors that serve the head's schedulers and
store over CURVE TCP, keeps them running, and heartbeats the head.

It is the head's ``Supervisor`` with three differences: its children are executors only, configured with the
head's addresses (from the copy of the head's ``cluster.json`` in this host's home) and bound on this host's
advertised address; its executors are ``HOST/executor-N``; and every ``NODE_HEARTBEAT_S`` it tells the head's
supervisor which executors run here (``NodeHeartbeat``). The head judges the host by these heartbeats alone
(``nodes.py``); each answer carries the head's current cluster file, kept here so this host's executors see
every other executor (departures reach them all). With ``cbctl join --max-executors N`` the heartbeat offers
the head's autoscaler N CPU executors, and each answer may carry how many to run (``NodeAck.executors``): the
node starts or departs executors to match (``ExecutorResizer``, the head's own steps; a departure is
graceful), and decides nothing itself. Told it was declared lost (its link was down too long), it starts its
executors afresh. ``cbctl leave`` (SIGTERM) departs the executors gracefully, as ``cbctl scale``
does, then says the host leaves.

Its own control socket is ipc in this host's home: nothing but `cbctl leave` and `cbctl status` here talk to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import zmq

from cbctl.errors import AuthenticationError, CbctlError, ProtocolError
from cbctl.runtime import cluster
from cbctl.runtime.defaults import (
    JOIN_TIMEOUT_S,
    MAX_BATCH,
    MAX_CONTINUATIONS,
    NODE_HEARTBEAT_S,
    NODE_LOST_AFTER_S,
    SHUTDOWN_TIMEOUT_S,
)
from cbctl.runtime.process import ProcessConfig, new_socket, setup_logging
from cbctl.runtime.supervisor.autoscaling import ExecutorResizer
from cbctl.runtime.supervisor.child import Child
from cbctl.runtime.supervisor.supervisor import STARTUP_ERROR_FILE, ClusterSpec, StartupError, Supervisor
from cbctl.runtime.wire import auth, limits
from cbctl.runtime.wire.messages import NodeAck, NodeHeartbeat, unpack

log = logging.getLogger(__name__)


@dataclass
class JoinSpec:
    """What ``cbctl join`` asked for."""

    head: str  # tcp://HEAD:PORT, one of the head's scheduler addresses
    advertise: str  # tcp://ADDR: where this host's executors bind, reachable from the head and other hosts
    host: str  # the name its executors go by (HOST/executor-N): ADDR unless given
    executors: int
    gpu_executors: int = 0
    fake_gpus: int = 0
    cache_mb: int = 64
    max_batch: int = MAX_BATCH
    max_continuations: int = MAX_CONTINUATIONS
    timeout_s: float = JOIN_TIMEOUT_S  # how long to wait for the head's first answer
    max_executors: int = 0  # CPU executors offered to the head's autoscaler (0: ``executors`` stays fixed)


class NodeSupervisor(Supervisor):
    def __init__(self, home: Path, join: JoinSpec) -> None:
        head = cluster.ClusterFile.read(home)
        if head is None:
            raise StartupError(f"no readable cluster.json in {home}: copy the head's (see `cbctl join --help`)")
        self.head = head
        self.join = join
        spec = ClusterSpec(executors=join.executors, gpu_executors=join.gpu_executors, schedulers=0, listen="",
                           curve=True, fake_gpus=join.fake_gpus, cache_mb=join.cache_mb, max_batch=join.max_batch,
                           max_continuations=join.max_continuations, max_message_bytes=head.max_message_bytes)
        super().__init__(home, spec)
        self.host = join.host
        self.seq = 0
        self.fresh_after_seq = 0  # "lost" answers to heartbeats up to this one are about processes already replaced
        self.accepted = False
        self.next_heartbeat = 0.0
        self.last_ack = time.monotonic()
        self.resizer = ExecutorResizer(self)  # carries out the head's autoscaler's count for this host
        self.head_sock = new_socket(self.context, zmq.DEALER)
        self.head_watch = auth.watch_handshakes(self.head_sock, head.control_address)
        auth.connect(self.head_sock, head.control_address)

    # --- children --------------------------------------------------------------------------------------

    def _new_child(self, role: str, index: int, options: dict[str, Any] | None = None) -> Child:
        config = ProcessConfig(
            home=str(self.home), role=role, index=index, supervisor_address=self.ready_address,
            store_address=self.head.store_address, scheduler_addresses=list(self.head.scheduler_addresses),
            listen=self.join.advertise, curve=True,
            options={limits.OPTION: self.spec.max_message_bytes, "host": self.join.host, **(options or {})},
        )
        child = Child(config)
        self.children[config.name] = child
        return child

    def scheduler_addresses(self) -> list[str]:
        return list(self.head.scheduler_addresses)

    def executor_id(self, child: Child) -> str:
        return f"{self.join.host}/{child.config.name}"

    def start(self) -> None:
        self._handshake()
        spec = self.spec
        executors = [self._new_executor(i, "cpu") for i in range(spec.executors)]
        executors += [self._new_executor(spec.executors + i, "gpu", device=i) for i in range(spec.gpu_executors)]
        self._start_role(executors, addresses_known=False)
        self.write_cluster_file()
        self.heartbeat()

    def _handshake(self) -> None:
        """The head accepts this host, or the join fails with why: keys refused, no answer, another protocol
        version, or a reason of the head's (a host of this name joined already)."""
        self.heartbeat()
        if not auth.wait_for_reply(self.head_sock, self.join.timeout_s, self.head_watch,
                                   self.head.control_address, self.home):
            raise StartupError(
                f"the head did not answer within {self.join.timeout_s:g} s at {self.head.control_address} (its "
                f"supervisor; calls go to {self.join.head}): is the cluster up there, is this home's cluster.json "
                "a copy of its current one, and can this machine reach the head's ports?")
        self._on_head_frames()
        if not self.accepted:
            raise StartupError("the head refused this host: see the log")

    def write_cluster_file(self) -> None:
        """This host's own file, ``node.json`` (the cluster file here is the head's copy, which acks renew)."""
        me = psutil.Process()
        cluster.NodeFile(
            host=self.join.host, head=self.join.head, node_pid=me.pid, create_time=me.create_time(),
            pid_space=cluster.pid_space(), control_address=self.control_address, started_at=self.started_at,
            executors=[cluster.ProcessEntry("executor", c.config.index, c.pid, c.address, c.started_at, c.restarts,
                                            c.config.options.get("executor_type", ""), host=self.join.host)
                       for c in self.children.values() if c.state != "stopped"],
        ).write(self.home)

    # --- heartbeats --------------------------------------------------------------------------------------

    def heartbeat(self, leaving: bool = False) -> None:
        self.seq += 1
        executors = [[c.config.index, c.pid, c.address, c.config.options.get("executor_type", "cpu"), c.state,
                      c.started_at, c.restarts]
                     for c in self.children.values() if c.state == "ready" and c.address]
        try:
            self.head_sock.send(NodeHeartbeat(self.join.host, os.getpid(), self.seq, executors, leaving,
                                              self.join.max_executors).pack(), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the link is down and zmq's queue is full: the next one says the same, later
        self.next_heartbeat = time.monotonic() + NODE_HEARTBEAT_S

    def _on_head_frames(self) -> None:
        while self.head_sock.poll(0):
            frame = self.head_sock.recv()
            try:
                ack = unpack(frame)
            except ProtocolError as exc:  # a head of another version says so in a frame every version reads
                if not self.accepted:
                    raise StartupError(str(exc)) from None
                log.warning("the head sent a bad frame: %s", exc)
                continue
            if not isinstance(ack, NodeAck):
                continue
            self.last_ack = time.monotonic()
            if ack.accepted:
                if not self.accepted:
                    log.info("joined the head as %s", self.join.host)
                self.accepted = True
                self._keep_cluster_file(ack.cluster_file)
                self._resize(ack.executors)
            elif not self.accepted:
                raise StartupError(f"the head refused this host: {ack.reason}")
            elif ack.reason.startswith("lost"):
                if ack.seq > self.fresh_after_seq:  # heartbeats queued while the link was down get one answer each
                    self._start_afresh()
            else:  # the head stops (`cbctl down`), or took this host for another: its executors depart
                log.warning("the head no longer accepts this host: %s; leaving", ack.reason)
                self.shutdown.requested = True
                self.accepted = False  # nothing to tell a head that dismissed it

    def _resize(self, count: int) -> None:
        """The head's autoscaler wants ``count`` CPU executors here (-1: no word, keep them)."""
        if count < 0 or not self.join.max_executors or self.shutdown.requested:
            return
        count = min(count, self.join.max_executors)  # the head never asks more; a bound of our own all the same
        if count != len(self.resizer.active()):
            log.info("the head's autoscaler asks for %d CPU executor(s) here (%d run)", count,
                     len(self.resizer.active()))
            self.resizer.apply(count)
            self.write_cluster_file()

    def _keep_cluster_file(self, text: str) -> None:
        path = self.home / cluster.CLUSTER_FILE
        try:
            if path.read_text() == text:
                return
        except OSError:
            pass
        tmp = self.home / (cluster.CLUSTER_FILE + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        found = cluster.ClusterFile.read(self.home)
        if found is not None:
            self.head = found

    def _start_afresh(self) -> None:
        """The head declared this host lost (its calls went elsewhere): its executors' processes count as dead
        there, so new ones take their place, on the same addresses."""
        log.warning("the head declared this host lost (no heartbeat for %.0f s): restarting its executors",
                    NODE_LOST_AFTER_S)
        for child in self.children.values():
            if child.state in ("ready", "starting") and child.process is not None and child.process.is_alive():
                child.process.kill()
                child.process.join(5)
            if child.state in ("ready", "starting", "restarting"):
                child.restarts += 1
                self._spawn(child)
        self.fresh_after_seq = self.seq
        self.write_cluster_file()

    # --- run and stop ------------------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        for sock in (self.ready_sock, self.control_sock, self.head_sock):
            poller.register(sock, zmq.POLLIN)
        while not self.shutdown.requested:
            events = dict(poller.poll(100))
            if self.ready_sock in events:
                self._on_ready_frames()
                self.write_cluster_file()
            if self.control_sock in events:
                self._on_control_frames()
            if self.head_sock in events:
                self.timers.run(self._on_head_frames)
            self.timers.run(self._watch_children)
            if time.monotonic() >= self.next_heartbeat:
                self.heartbeat()
            if self.scaling is not None:
                self.timers.run(self._advance_scale)
            if self.resizer.departing:
                self.timers.run(self.resizer.reap)
        self.stop()

    def stop(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        log.info("leaving the cluster")
        # each departs gracefully: the head's schedulers stop placing work here
        self._stop_role("executor", timeout_s)
        if self.accepted:
            self.heartbeat(leaving=True)
        deadline = time.monotonic() + 2.0  # the head's word that it heard; gone or not, this host is done
        while self.accepted and time.monotonic() < deadline and \
                self.head_sock.poll(int((deadline - time.monotonic()) * 1000) + 1):
            try:
                if isinstance(unpack(self.head_sock.recv()), NodeAck):
                    break
            except CbctlError:
                break
        (self.home / cluster.NODE_FILE).unlink(missing_ok=True)
        if self.head_watch is not None:
            self.head_watch.close()
        for sock in (*self.scheduler_socks, self.head_sock, self.ready_sock, self.control_sock):
            sock.close()
        self.context.term()
        log.info("left the cluster")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="cbctl node supervisor (started by `cbctl join`)")
    parser.add_argument("--home", required=True)
    parser.add_argument("--spec", required=True, help="JoinSpec as JSON")
    args = parser.parse_args(argv)
    home = Path(args.home)
    join = JoinSpec(**json.loads(args.spec))
    os.umask(cluster.PRIVATE_UMASK)
    setup_logging(ProcessConfig(home=str(home), role="node", index=0, supervisor_address=""))
    (home / STARTUP_ERROR_FILE).unlink(missing_ok=True)
    try:
        node = NodeSupervisor(home, join)
    except (CbctlError, StartupError, zmq.ZMQError, OSError) as exc:
        log.error("join failed: %s", exc)
        (home / STARTUP_ERROR_FILE).write_text(str(exc))
        sys.exit(1)
    try:
        node.start()
    except (StartupError, AuthenticationError, CbctlError) as exc:
        log.error("join failed: %s", exc)
        (home / STARTUP_ERROR_FILE).write_text(str(exc))
        node.stop()
        sys.exit(1)
    except Exception as exc:
        log.exception("join failed")
        (home / STARTUP_ERROR_FILE).write_text(str(exc))
        node.stop()
        sys.exit(1)
    node.run()


if __name__ == "__main__":
    main()

