"""The scheduler: owns the registry view, the placement policy and the executors' statuses, and turns
each call into triggers for the executors the policy picks.

One ROUTER socket serves clients (calls and control requests) and executors (statuses, pin replies).
A call is answered by the sink executor, straight to the caller; the scheduler only writes back when the
call cannot be dispatched. The registry lives in the store and is re-read periodically, so several
schedulers, or a restarted one, serve the same functions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import zmq

from cbctl.errors import CbctlError, InvalidArgument, NoSuchFunction, ProtocolError
from cbctl.runtime import registry
from cbctl.runtime.dag import chain_edges, validate_dag
from cbctl.runtime.messages import (
    CallRequest,
    CallResult,
    ClusterInfoRequest,
    ControlResponse,
    DagTrigger,
    ExecutorStatus,
    ListRequest,
    Message,
    RegisterDag,
    RegisterFunction,
    RemoveRequest,
    StatusAck,
    unpack,
)
from cbctl.runtime.policy import Policy
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

log = logging.getLogger(__name__)

#: Seconds between re-reads of the registry from the store (what another scheduler registered).
REGISTRY_REFRESH_S = 2.0
CONSISTENCY_MODES = ("lww", "repeatable_read", "causal")


@dataclass(frozen=True)
class CallPlan:
    """Everything a call of one name needs, computed once per registration, not per call."""

    name: str
    dag: str  # '' for a single function
    functions: tuple[str, ...]
    edges: list[list[str]]
    sources: tuple[str, ...]
    versions: dict[str, int]
    gpu: dict[str, bool]


class Scheduler:
    def __init__(self, config: ProcessConfig, context: zmq.Context, store: StoreClient) -> None:
        self.config = config
        self.store = store
        self.policy = Policy()
        self.peers = PeerSockets(context)
        self.functions: dict[str, registry.FunctionRecord] = {}
        self.dags: dict[str, registry.DagRecord] = {}
        self.plans: dict[str, CallPlan] = {}
        self.counters = {"calls": 0, "dag_calls": 0, "dispatch_errors": 0, "protocol_errors": 0}
        self.started = time.time()
        self.refresh_registry()

    # --- registry --------------------------------------------------------------------------------------

    def refresh_registry(self) -> None:
        self.functions, self.dags = registry.load_all(self.store)
        self.plans.clear()

    def plan_for(self, name: str) -> CallPlan:
        plan = self.plans.get(name)
        if plan is not None:
            return plan
        if name not in self.dags and name not in self.functions:
            self.refresh_registry()  # registered through another scheduler since our last refresh?
        dag = self.dags.get(name)
        if dag is not None:
            fns, edges, sources = tuple(dag.functions), dag.edges, tuple(
                f for f in dag.functions if not any(b == f for _, b in dag.edges))
        elif name in self.functions:
            fns, edges, sources = (name,), [], (name,)
        else:
            raise NoSuchFunction(f"no function or DAG is registered as {name!r}: see `cbctl ls`")
        missing = [f for f in fns if f not in self.functions]
        if missing:
            raise NoSuchFunction(f"DAG {name!r} uses {', '.join(missing)}, which is no longer registered")
        plan = CallPlan(name, name if dag is not None else "", fns, edges, sources,
                        {f: self.functions[f].version for f in fns}, {f: self.functions[f].gpu for f in fns})
        self.plans[name] = plan
        return plan

    # --- handlers --------------------------------------------------------------------------------------

    def on_call(self, request: CallRequest) -> None:
        try:
            plan = self.plan_for(request.name)
            if request.consistency not in CONSISTENCY_MODES:
                raise InvalidArgument(f"consistency {request.consistency!r} is not one of {CONSISTENCY_MODES}")
            locations = {fn: self.policy.pick_executor(fn, plan.gpu[fn], request.refs).address
                         for fn in plan.functions}
        except CbctlError as exc:
            self.counters["dispatch_errors"] += 1
            self.peers.send(request.response_address, CallResult(
                request.call_id, False, b"", type(exc).__name__, str(exc)).pack())
            return
        self.counters["dag_calls" if plan.dag else "calls"] += 1
        for source in plan.sources:
            trigger = DagTrigger(request.call_id, plan.dag, source, locations, plan.versions, plan.edges, "",
                                 request.source_args.get(source, request.args), request.response_address,
                                 request.store_result, request.consistency, {})
            self.peers.send(locations[source], trigger.pack())

    def on_register_function(self, request: RegisterFunction) -> Any:
        name = request.name
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise InvalidArgument(f"function name {name!r} is invalid: use a non-empty name not starting with '__'")
        options = request.options
        if options.get("gpu") and not any(v.executor_type == "gpu" for v in self.policy.executors.values()):
            from cbctl.errors import NoExecutorAvailable

            raise NoExecutorAvailable(
                f"function {name!r} needs a GPU but this cluster has no GPU executor: "
                "start it with `cbctl up --gpu-executors N`")
        record = registry.FunctionRecord(
            name=name, code=request.code, version=time.time_ns(), gpu=bool(options.get("gpu")),
            batching=bool(options.get("batching")), is_class=bool(options.get("is_class")),
            init_args=options.get("init_args", b""))
        registry.save_function(self.store, record)
        self.functions[name] = record
        self.plans.clear()
        return record.describe()

    def on_register_dag(self, request: RegisterDag) -> Any:
        self.refresh_registry()
        edges = request.edges if request.edges else [list(e) for e in chain_edges(request.functions)]
        shape = validate_dag(request.name, request.functions, edges, self.functions)
        if request.name in self.functions:
            raise InvalidArgument(f"{request.name!r} is already a function's name: give the DAG another name")
        record = registry.DagRecord(request.name, list(shape.functions), [list(e) for e in shape.edges],
                                    time.time_ns(), dict(request.options or {}))
        registry.save_dag(self.store, record)
        self.dags[record.name] = record
        self.plans.clear()
        return record.describe()

    def on_list(self, _request: ListRequest) -> Any:
        self.refresh_registry()
        where: dict[str, list[str]] = {}
        for executor_id, view in self.policy.executors.items():
            for fn in view.pinned:
                where.setdefault(fn, []).append(executor_id)
        return {
            "functions": [{**f.describe(), "pinned": sorted(where.get(f.name, []))}
                          for f in sorted(self.functions.values(), key=lambda f: f.name)],
            "dags": [d.describe() for d in sorted(self.dags.values(), key=lambda d: d.name)],
        }

    def on_remove(self, request: RemoveRequest) -> Any:
        self.refresh_registry()
        name = request.name
        if name in self.dags:
            self.store.delete(registry.DAG_PREFIX + name)
            kind = "dag"
        elif name in self.functions:
            users = [d.name for d in self.dags.values() if name in d.functions]
            if users:
                raise InvalidArgument(f"function {name!r} is used by DAG(s) {', '.join(users)}: remove those first")
            self.store.delete(registry.FUNCTION_PREFIX + name)
            kind = "function"
        else:
            raise NoSuchFunction(f"no function or DAG is registered as {name!r}: see `cbctl ls`")
        self.refresh_registry()
        return {"removed": name, "kind": kind}

    def on_cluster_info(self, _request: ClusterInfoRequest) -> Any:
        return {
            "scheduler": self.config.name,
            "uptime_s": time.time() - self.started,
            "counters": dict(self.counters, dropped_sends=self.peers.dropped),
            "executors": {e: _status_dict(v.status) for e, v in self.policy.executors.items() if v.status},
            "policy": self.policy.describe(),
        }

    def on_status(self, status: ExecutorStatus) -> None:
        self.policy.process_status(status)

    CONTROL = {
        RegisterFunction: on_register_function,
        RegisterDag: on_register_dag,
        ListRequest: on_list,
        RemoveRequest: on_remove,
        ClusterInfoRequest: on_cluster_info,
    }

    def handle(self, sock: zmq.Socket, parts: list[bytes]) -> None:
        try:
            message: Message = unpack(parts[-1])
        except ProtocolError as exc:
            self.counters["protocol_errors"] += 1
            log.warning("dropped a bad frame: %s", exc)
            return
        kind = type(message)
        if kind is CallRequest:
            self.on_call(message)
        elif kind is ExecutorStatus:
            self.on_status(message)
            sock.send_multipart([*parts[:-1], StatusAck(message.executor_id).pack()])
        elif kind in self.CONTROL:
            try:
                reply = ControlResponse(message.req_id, True, self.CONTROL[kind](self, message))
            except CbctlError as exc:
                reply = ControlResponse(message.req_id, False, None, type(exc).__name__, str(exc))
            except Exception as exc:  # a handler bug must not kill the scheduler
                log.exception("control request %s failed", kind.__name__)
                reply = ControlResponse(message.req_id, False, None, "CbctlError", f"internal error: {exc}")
            sock.send_multipart([*parts[:-1], reply.pack()])
        else:
            self.counters["protocol_errors"] += 1
            log.warning("the scheduler does not serve %s", kind.__name__)


def _status_dict(status: ExecutorStatus) -> dict[str, Any]:
    return {f: getattr(status, f) for f in status._FIELDS}


def main(config: ProcessConfig) -> None:
    setup_logging(config)
    shutdown = ShutdownFlag()
    context = zmq.Context()
    store = StoreClient(context, config.store_address, writer_id=config.name)
    scheduler = Scheduler(config, context, store)
    sock = new_socket(context, zmq.ROUTER)
    address = config.bind(sock)
    report_ready(context, config, address)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    next_refresh = time.monotonic() + REGISTRY_REFRESH_S
    while not shutdown.requested:
        if poller.poll(100):
            for parts in drain(sock):
                try:
                    scheduler.handle(sock, parts)
                except Exception:
                    log.exception("error while handling a message")
        now = time.monotonic()
        if now >= next_refresh:
            next_refresh = now + REGISTRY_REFRESH_S
            scheduler.policy.periodic_update()
            try:
                scheduler.refresh_registry()
            except CbctlError as exc:
                log.warning("registry refresh failed: %s", exc)
    sock.close()
    scheduler.peers.close()
    store.close()
    context.term()
    log.info("scheduler stopped")
