"""The executor: one process, one thread of user code, Cloudburst's executor thread.

Its loop: drain the PULL socket (triggers, pins, direct messages), run what is ready (a function runs
once every upstream trigger of its call has arrived), pass each result on (to the successors' executors,
or straight to the caller for the sink), and report a status to every scheduler about once a second.
A user exception becomes an error result for the caller and never stops the loop.
"""

from __future__ import annotations

import collections
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import zmq

from cbctl.errors import CbctlError, InvalidArgument, NoSuchFunction, ProtocolError
from cbctl.runtime import cluster, registry, serialization
from cbctl.runtime.dag import downstream_of, upstream_of
from cbctl.runtime.defaults import STATUS_INTERVAL_S
from cbctl.runtime.messages import (
    CallResult,
    DagTrigger,
    DirectMessage,
    ExecutorStatus,
    Message,
    PinRequest,
    PinResponse,
    StatusAck,
    UnpinRequest,
    unpack,
)
from cbctl.runtime.process import (
    PeerSockets,
    ProcessConfig,
    ShutdownFlag,
    drain,
    new_socket,
    report_ready,
    setup_logging,
)
from cbctl.runtime.store_client import StoreClient
from cbctl.runtime.userlib import UserLibrary

log = logging.getLogger(__name__)

#: Seconds a partly-triggered DAG step waits for its other triggers before it is dropped.
JOIN_TIMEOUT_S = 600.0
#: Seconds of quiet a draining executor waits for work already sent to it before it exits.
DRAIN_QUIET_S = 0.3


@dataclass
class LoadedFunction:
    record: registry.FunctionRecord
    target: Any  # the function, or the bound ``run`` of the constructed class


@dataclass
class FunctionMetrics:
    calls: int = 0
    errors: int = 0
    latencies_us: list[float] = field(default_factory=list)


class Executor:
    def __init__(self, config: ProcessConfig, context: zmq.Context, store: StoreClient, address: str) -> None:
        self.config = config
        self.executor_id = config.name
        self.executor_type = config.options.get("executor_type", "cpu")
        self.address = address
        self.store = store
        self.peers = PeerSockets(context)
        self.userlib = UserLibrary(self)
        self.functions: dict[str, LoadedFunction] = {}
        self.pinned: set[str] = set()
        self.joins: dict[tuple[str, str], dict[str, DagTrigger]] = {}
        self.join_started: dict[tuple[str, str], float] = {}
        self.ready: collections.deque[tuple[DagTrigger, list[DagTrigger]]] = collections.deque()
        self.inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self.deferred: list[bytes] = []  # frames that arrived while user code waited in recv
        self.sock: zmq.Socket | None = None
        self.executor_addresses: dict[str, str] = {}
        self.metrics: dict[str, FunctionMetrics] = collections.defaultdict(FunctionMetrics)
        self.busy_ns = 0
        self.protocol_errors = 0

    # --- messages ------------------------------------------------------------------------------------

    def on_frame(self, frame: bytes) -> None:
        try:
            message: Message = unpack(frame)
        except ProtocolError as exc:
            self.protocol_errors += 1
            log.warning("dropped a bad frame: %s", exc)
            return
        handler = self.HANDLERS.get(type(message))
        if handler is None:
            self.protocol_errors += 1
            log.warning("the executor does not serve %s", type(message).__name__)
            return
        handler(self, message)

    def on_trigger(self, trigger: DagTrigger) -> None:
        upstream = upstream_of(trigger.edges, trigger.function)
        if len(upstream) <= 1:
            self.ready.append((trigger, [trigger]))
            return
        key = (trigger.call_id, trigger.function)
        arrived = self.joins.get(key)
        if arrived is None:
            arrived = self.joins[key] = {}
            self.join_started[key] = time.monotonic()
        arrived[trigger.source] = trigger
        if len(arrived) == len(upstream):
            del self.joins[key], self.join_started[key]
            self.ready.append((trigger, [arrived[u] for u in upstream]))

    def on_pin(self, request: PinRequest) -> None:
        try:
            self.load(request.function, request.version)
            self.pinned.add(request.function)
            reply = PinResponse(self.executor_id, request.function, True)
        except CbctlError as exc:
            reply = PinResponse(self.executor_id, request.function, False, str(exc))
        self.peers.send(request.scheduler_address, reply.pack())

    def on_unpin(self, request: UnpinRequest) -> None:
        self.pinned.discard(request.function)

    def on_direct(self, message: DirectMessage) -> None:
        self.inbox.append((message.sender, serialization.decode(message.body)))

    HANDLERS = {DagTrigger: on_trigger, PinRequest: on_pin, UnpinRequest: on_unpin, DirectMessage: on_direct}

    # --- running -------------------------------------------------------------------------------------

    def load(self, name: str, version: int) -> LoadedFunction:
        loaded = self.functions.get(name)
        if loaded is not None and loaded.record.version >= version:
            return loaded
        record = registry.load_function(self.store, name)
        if record is None:
            raise NoSuchFunction(f"function {name!r} is not registered (removed while the call was under way?)")
        try:
            target = cloudpickle.loads(record.code)
            if record.is_class:
                init_args = serialization.decode(record.init_args) if record.init_args else ()
                target = target(*init_args).run
        except Exception as exc:
            raise InvalidArgument(f"function {name!r} could not be loaded on {self.executor_id}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        loaded = self.functions[name] = LoadedFunction(record, target)
        return loaded

    def run_next(self) -> None:
        trigger, inputs = self.ready.popleft()
        started = time.perf_counter_ns()
        name = trigger.function
        metrics = self.metrics[name]
        metrics.calls += 1
        try:
            loaded = self.load(name, trigger.versions.get(name, 0))
            if trigger.source:
                args = [serialization.decode(t.payload) for t in inputs]
            else:
                args = serialization.decode(trigger.payload)
            args = [self.read_key(a.key) if type(a) is serialization.Ref else a for a in args]
            result = loaded.target(self.userlib, *args)
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything, SystemExit included
            if isinstance(exc, KeyboardInterrupt):
                raise
            metrics.errors += 1
            self.fail(trigger, exc)
        else:
            self.deliver(trigger, result)
        elapsed = time.perf_counter_ns() - started
        self.busy_ns += elapsed
        metrics.latencies_us.append(elapsed / 1000)

    def deliver(self, trigger: DagTrigger, result: Any) -> None:
        successors = downstream_of(trigger.edges, trigger.function) if trigger.edges else ()
        try:
            payload = serialization.encode(result)
        except Exception as exc:
            self.fail(trigger, exc)
            return
        if not successors:
            self.respond(trigger, CallResult(trigger.call_id, True, payload, executor_id=self.executor_id))
            return
        for successor in successors:
            downstream = DagTrigger(trigger.call_id, trigger.dag, successor, trigger.locations, trigger.versions,
                                    trigger.edges, trigger.function, payload, trigger.response_address,
                                    trigger.store_result, trigger.consistency, trigger.extras)
            address = trigger.locations[successor]
            if address == self.address:
                self.on_trigger(downstream)  # same executor: no socket hop
            else:
                self.peers.send(address, downstream.pack())

    def fail(self, trigger: DagTrigger, exc: BaseException) -> None:
        if isinstance(exc, CbctlError) and not isinstance(exc, InvalidArgument):
            error_type, remote_type = type(exc).__name__, ""
        else:
            error_type, remote_type = "FunctionError", type(exc).__name__
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.respond(trigger, CallResult(trigger.call_id, False, b"", error_type, str(exc), text,
                                         self.executor_id, remote_type))

    def respond(self, trigger: DagTrigger, result: CallResult) -> None:
        if trigger.store_result:
            fields = {f: getattr(result, f) for f in result._FIELDS}
            self.store.put(registry.result_key(trigger.call_id), fields)
        else:
            self.peers.send(trigger.response_address, result.pack())

    def expire_joins(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self.join_started.items() if now - t > JOIN_TIMEOUT_S]:
            log.warning("call %s: %s never got all its triggers; dropped", *key)
            del self.joins[key], self.join_started[key]

    # --- the user library's needs --------------------------------------------------------------------

    def read_key(self, key: str) -> Any:
        return self.store.get(key)

    def write_key(self, key: str, value: Any) -> None:
        self.store.put(key, value)

    def send_direct(self, executor_id: str, message: Any) -> None:
        address = self.executor_addresses.get(executor_id)
        if address is None:
            found = cluster.ClusterFile.read(Path(self.config.home))
            for entry in found.processes if found else ():
                if entry.role == "executor":
                    self.executor_addresses[f"executor-{entry.index}"] = entry.address
            address = self.executor_addresses.get(executor_id)
        if address is None:
            raise InvalidArgument(f"no executor {executor_id!r} in this cluster: ids are as cb.getid() returns")
        frame = DirectMessage(self.executor_id, serialization.encode(message)).pack()
        if address == self.address:
            self.inbox.append((self.executor_id, message))
        else:
            self.peers.send(address, frame)

    def receive_direct(self, deadline: float | None) -> list[tuple[str, Any]]:
        assert self.sock is not None
        while not self.inbox and deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000) + 1):
                break
            for (frame,) in drain(self.sock):
                try:
                    message = unpack(frame)
                except ProtocolError:
                    self.protocol_errors += 1
                    continue
                if isinstance(message, DirectMessage):
                    self.on_direct(message)
                else:
                    self.deferred.append(frame)  # handled after the running function returns
        messages = list(self.inbox)
        self.inbox.clear()
        return messages

    # --- status --------------------------------------------------------------------------------------

    def status(self, running: bool, utilization: float) -> ExecutorStatus:
        function_metrics = {}
        for name, m in self.metrics.items():
            lat = sorted(m.latencies_us)
            function_metrics[name] = {
                "calls": m.calls, "errors": m.errors,
                "p50_us": lat[len(lat) // 2] if lat else None,
                "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
            }
            m.latencies_us.clear()
        return ExecutorStatus(
            self.executor_id, self.address, self.executor_type, running, sorted(self.pinned), utilization,
            len(self.ready), [], os.getpid(),
            {"functions": function_metrics, "protocol_errors": self.protocol_errors,
             "dropped_sends": self.peers.dropped},
        )


class StatusReporter:
    """Sends the executor's status to every scheduler on a timer (from the executor's own loop)."""

    def __init__(self, context: zmq.Context, executor: Executor, scheduler_addresses: list[str]) -> None:
        self.executor = executor
        self.sockets = []
        for address in scheduler_addresses:
            sock = new_socket(context, zmq.DEALER)
            sock.connect(address)
            self.sockets.append(sock)
        self.last_report = time.monotonic()
        self.last_busy_ns = 0

    def report(self, running: bool = True) -> None:
        now = time.monotonic()
        wall = max(now - self.last_report, 1e-9)
        busy = self.executor.busy_ns - self.last_busy_ns
        utilization = min(1.0, busy / 1e9 / wall)
        self.last_report, self.last_busy_ns = now, self.executor.busy_ns
        frame = self.executor.status(running, utilization).pack()
        for sock in self.sockets:
            drain(sock)  # acks of earlier reports
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                pass

    def due(self) -> bool:
        return time.monotonic() - self.last_report >= STATUS_INTERVAL_S

    def handshake(self, timeout_s: float = 30.0) -> None:
        """Report once and wait until every scheduler acknowledged, so ``cbctl up`` returns only when
        every scheduler can place work here."""
        deadline = time.monotonic() + timeout_s
        self.report()
        for sock in self.sockets:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("a scheduler did not acknowledge this executor's status")
                if sock.poll(min(1000, int(remaining * 1000) + 1)):
                    if isinstance(unpack(sock.recv()), StatusAck):
                        break
                else:
                    self.report()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def main(config: ProcessConfig) -> None:
    setup_logging(config)
    shutdown = ShutdownFlag()
    context = zmq.Context()
    store = StoreClient(context, config.store_address, writer_id=config.name)
    sock = new_socket(context, zmq.PULL)
    address = config.bind(sock)
    executor = Executor(config, context, store, address)
    executor.sock = sock
    reporter = StatusReporter(context, executor, config.scheduler_addresses)
    try:
        reporter.handshake()
    except TimeoutError as exc:
        report_ready(context, config, address, str(exc))
        raise SystemExit(1) from None
    report_ready(context, config, address)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    quiet_since = None
    while True:
        if poller.poll(0 if executor.ready or executor.deferred else 100):
            for (frame,) in drain(sock):
                executor.on_frame(frame)
            quiet_since = None
        while executor.deferred:
            executor.on_frame(executor.deferred.pop(0))
        if executor.ready:
            executor.run_next()
        if reporter.due():
            reporter.report(running=not shutdown.requested)
            executor.expire_joins()
        if shutdown.requested and not executor.ready:
            # warm stop: tell schedulers we are leaving, then take what was already sent until quiet
            if quiet_since is None:
                reporter.report(running=False)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > DRAIN_QUIET_S:
                break
    reporter.report(running=False)
    reporter.close()
    executor.peers.close()
    store.close()
    sock.close()
    context.term()
    log.info("executor stopped")
