"""The scheduler: owns the registry view, the placement policy and the executors' statuses, and turns
each call into triggers for the executors the policy picks.

One ROUTER socket serves clients (calls and control requests) and executors (statuses, pin replies).
A call is answered by the sink executor, straight to the caller; the scheduler only writes back when the
call cannot be dispatched. The registry lives in the store and is re-read periodically, so several
schedulers, or a restarted one, serve the same functions.

Long on purpose: ``Scheduler`` is one loop's state (registry view, plans, in-flight calls) and its handlers;
placement is ``policy``, crash retries ``retries``, trigger requests ``triggers``.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from cbctl.errors import (
    CallLost,
    CbctlError,
    ClusterNotRunning,
    InvalidArgument,
    MessageTooLarge,
    NoExecutorAvailable,
    NoSuchFunction,
    ProtocolError,
)
from cbctl.runtime import cluster, consistency, multiexec, registry, step_records
from cbctl.runtime.continuation import DEPTH_KEY
from cbctl.runtime.dag import chain_edges, chain_steps, parallel_branches, validate_dag
from cbctl.runtime.defaults import (
    AUTOSCALE_PARK_S,
    DISPATCH_WAIT_S,
    FUNCTION_VERSION_KEEP_S,
    MAX_MESSAGE_BYTES,
    RATE_SAMPLE_S,
    RATE_WINDOW_S,
    SCHEDULER_WARMUP_S,
    STOP_LINGER_S,
    TOP_SILENT_AFTER_S,
)
from cbctl.runtime.metrics import RateWindow, in_flight_estimate
from cbctl.runtime.process import (
    PeerSockets,
    ProcessConfig,
    Receiver,
    RejectedFrameLog,
    ShutdownFlag,
    TimerWork,
    drain,
    freeze_startup_heap,
    new_context,
    new_socket,
    process_alive,
    report_ready,
    setup_logging,
)
from cbctl.runtime.retries import ATTEMPT_KEY, InFlightCall, InFlightTable, with_attempt
from cbctl.runtime.scheduler import triggers
from cbctl.runtime.scheduler.load_report import LoadReporter
from cbctl.runtime.scheduler.placement import new_policy
from cbctl.runtime.scheduler.policy import ExecutorView, PinAction, PolicySettings, host_of
from cbctl.runtime.store_client import StoreClient
from cbctl.runtime.stores import connect_store
from cbctl.runtime.wire import limits, shared
from cbctl.runtime.wire.messages import (
    TRIGGER_DEPTH_EXTRA,
    AddTrigger,
    AutoscaleMode,
    CallAborted,
    CallMoved,
    CallRequest,
    CallResult,
    CallRetried,
    ClusterInfoRequest,
    ContinueCall,
    ControlResponse,
    DagTrigger,
    Deploy,
    DescribeCluster,
    ExecutorLoad,
    ExecutorLost,
    ExecutorStatus,
    LeavingAck,
    ListRequest,
    ListTriggers,
    Message,
    PinRequest,
    PinResponse,
    RegisterDag,
    RegisterFunction,
    RemoveRequest,
    RemoveTrigger,
    StatusAck,
    StealHint,
    UnpinRequest,
    is_address,
    unpack,
    version_refusal,
)

log = logging.getLogger(__name__)
rejected = RejectedFrameLog(log)  # warnings about frames this process drops, rate-limited

#: Seconds between re-reads of the registry from the store (what another scheduler registered).
REGISTRY_REFRESH_S = 2.0
#: Seconds one periodic re-read may wait for the store, in one attempt: the loop serves no call meanwhile, so
#: a dead or restarting store must not hold it for a store client's whole retry budget; the next one retries.
REGISTRY_REFRESH_TIMEOUT_S = 0.5
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
    parallel: dict[str, tuple[str, ...]]  # per function: earlier functions it may run alongside
    follows: dict[str, str]  # per step of a chain (dag.chain_steps): the one it runs after (placed with it if free)
    extras: dict[str, Any] = field(default_factory=dict)  # what every trigger carries (multi-exec run counts)


@dataclass(slots=True)
class ParkedCall:
    """A call no executor could take when it came (or when its executor died): dispatched again as soon as
    one reports, or failed at ``deadline``."""

    request: CallRequest
    depth: int
    attempt: int
    deadline: float
    lost: str  # what died, for the error if none comes back ('' for a call not yet dispatched)


class Scheduler:
    def __init__(self, config: ProcessConfig, context: zmq.Context, store: StoreClient) -> None:
        self.config = config
        self.store = store
        # the host of this machine's executors as the policy keys them (host_of): on TCP, the --listen host, so
        # the pid check below covers exactly the executors of this machine and never a joined host's
        local_host = config.listen.removeprefix("tcp://") if config.listen else socket.gethostname()
        self.policy = new_policy(PolicySettings.from_options(config.options.get("policy", {})), local_host=local_host)
        self.record_steps = step_records.enabled()  # tests and benchmarks: stamp triggers with dispatch times
        self.address = ""  # this scheduler's ROUTER address, set once bound: where executors answer pins
        self.peers = PeerSockets(context, shares=False)  # it forwards values: their handles, never copies
        self.timers = TimerWork(log)
        self.functions: dict[str, registry.FunctionRecord] = {}
        self.dags: dict[str, registry.DagRecord] = {}
        self.plans: dict[str, CallPlan] = {}
        self.counters = {"calls": 0, "dag_calls": 0, "dispatch_errors": 0, "protocol_errors": 0,
                         "executors_lost": 0, "retried_calls": 0, "lost_calls": 0, "duplicate_calls": 0,
                         # values forwarded unread, as frames of their own (wire/frames.py); the calls' frames
                         "out_of_band_bytes": 0, "call_request_bytes": 0,
                         # of those, the bytes of values it forwarded as shared-memory handles (wire/shared.py)
                         "shared_memory_bytes": 0}
        self.largest_parsed = 0  # bytes of the largest frame this scheduler parsed: it never reads a large value
        # crash semantics (retries.py): the calls dispatched, those waiting for an executor, the dead
        # processes whose late statuses are ignored, and until when a call nobody can take waits for one
        self.in_flight = InFlightTable()
        self.parked: list[ParkedCall] = []
        self.parked_ids: set[str] = set()  # so a client's resend of a parked call is not dispatched twice
        self.lost_pids: set[tuple[str, int]] = set()  # (executor id, pid): a reused pid is another process's
        self.wait_for_executors_until = time.monotonic() + SCHEDULER_WARMUP_S
        self.started = time.time()
        # for `cbctl top`: calls per function/DAG name, rates over both, and every executor's latest
        # status with when it came (kept apart from the policy's view, which may forget an executor)
        self.name_calls: dict[str, int] = {}
        self.rates = RateWindow(RATE_WINDOW_S, RATE_SAMPLE_S)
        self.name_rates = RateWindow(RATE_WINDOW_S, RATE_SAMPLE_S)
        self.statuses: dict[str, tuple[ExecutorStatus, float]] = {}
        # autoscaling: whether the supervisor may start CPU executors on demand (a CPU call with none then waits
        # for one), and the load reports it decides from (set by main once the context exists)
        self.executors_may_start = bool(config.options.get("autoscale"))
        self.load_reporter: LoadReporter | None = None
        self.refresh_registry()

    # --- registry --------------------------------------------------------------------------------------

    def refresh_registry(self, store: StoreClient | None = None) -> None:
        self.functions, self.dags = registry.load_all(store or self.store)
        self.plans.clear()
        self.apply(self.policy.set_wanted(pinned_functions(self.functions, self.dags)))

    def is_registered(self, name: str) -> bool:
        """Whether ``name`` is a registered function or DAG, after a fresh look at the registry."""
        self.refresh_registry()
        return name in self.functions or name in self.dags

    def on_add_trigger(self, request: AddTrigger) -> dict[str, Any]:
        return triggers.on_add(self.store, request, self.is_registered)

    def on_list_triggers(self, request: ListTriggers) -> list[dict[str, Any]]:
        return triggers.on_list(self.store, request)

    def on_remove_trigger(self, request: RemoveTrigger) -> dict[str, Any]:
        return triggers.on_remove(self.store, request)

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
        parallel = parallel_branches(fns, edges)
        plan = CallPlan(name, name if dag is not None else "", fns, edges, sources,
                        {f: self.functions[f].version for f in fns}, {f: self.functions[f].gpu for f in fns},
                        parallel, chain_steps(fns, edges, parallel),
                        multiexec.plan_extras(fns, edges, dag.options) if dag is not None else {})
        self.plans[name] = plan
        return plan

    # --- handlers --------------------------------------------------------------------------------------

    def on_call(self, request: CallRequest, depth: int = 0, attempt: int = 1, wait_until: float = 0.0,
                lost: str = "") -> None:
        """Place every function of the call and trigger its sources; ``depth`` counts the continuations
        that led here (0 for a client's call), ``attempt`` the dispatches of this call id (see retries.py).
        A call no executor can take waits until ``wait_until`` (or, fresh, while the scheduler is starting or
        an executor is being restarted) for one to report."""
        in_flight = self.in_flight
        if request.completed:
            done = in_flight.complete(request.completed)
            if done:
                self.policy.calls_finished(done)  # the steps they placed are no longer outstanding
        if attempt == 1 and not depth and (request.call_id in in_flight or request.call_id in self.parked_ids):
            self.counters["duplicate_calls"] += 1  # a client's resend of a call that is under way, or waiting
            return
        try:
            plan = self.plan_for(request.name)
            if request.consistency not in CONSISTENCY_MODES:
                raise InvalidArgument(f"consistency {request.consistency!r} is not one of {CONSISTENCY_MODES}")
            if request.source_args:
                check_source_args(plan, request.source_args)
            pick = self.policy.pick_executor
            now = time.monotonic()  # the dispatch time, for the policy and the in-flight table alike
            locations: dict[str, str] = {}
            follows = plan.follows
            for fn in plan.functions:
                parallel = plan.parallel[fn]
                locations[fn] = pick(fn, plan.gpu[fn], request.refs,
                                     [locations[p] for p in parallel] if parallel else (), now,
                                     # a chain's step: where the step it follows was placed ('' if none)
                                     request.call_id, locations.get(follows.get(fn), "")).address
        except NoExecutorAvailable as exc:
            deadline = wait_until or self.wait_for_executors_until
            starting = self.executors_may_start and not any(plan.gpu.values())
            if starting and not wait_until:
                deadline = max(deadline, time.monotonic() + AUTOSCALE_PARK_S)  # the autoscaler starts one
            if time.monotonic() < deadline:
                self.parked.append(ParkedCall(request, depth, attempt, deadline, lost))
                self.parked_ids.add(request.call_id)
                if starting and self.load_reporter is not None:
                    self.load_reporter.send_now(self.statuses, len(self.parked))
                return
            self.counters["dispatch_errors"] += 1
            self.reject(request, CallLost(f"{lost}; no executor came back within {DISPATCH_WAIT_S:.0f} s to run "
                                          "it again: check `cbctl status`") if lost else exc)
            return
        except CbctlError as exc:
            self.counters["dispatch_errors"] += 1
            self.reject(request, exc)
            return
        if self.policy.actions:
            self.apply(self.policy.take_actions())  # pinned on an idle executor, all others being busy
        self.counters["dag_calls" if plan.dag else "calls"] += 1
        self.name_calls[plan.name] = self.name_calls.get(plan.name, 0) + 1
        in_flight.add(request, locations, depth, attempt, now)
        extras = {**plan.extras, DEPTH_KEY: depth} if depth else plan.extras
        if request.extras:  # the client's read-your-writes session, and nothing else a client may set
            extras = (consistency.with_continued_call(extras, request.extras) if depth  # from an executor
                      else consistency.with_client_session(extras, request.extras))
            chain = request.extras.get(TRIGGER_DEPTH_EXTRA)  # a storage-triggered call's place in its chain
            if type(chain) is int:
                extras = {**extras, TRIGGER_DEPTH_EXTRA: chain}
        if attempt > 1:
            extras = with_attempt(extras, attempt)
        if self.record_steps:
            extras = step_records.stamp(extras)
        for source in plan.sources:
            trigger = DagTrigger(request.call_id, plan.dag, source, locations, plan.versions, plan.edges, "",
                                 request.source_args.get(source, request.args), request.response_address,
                                 request.store_result, request.consistency, extras)
            self.peers.send(locations[source], trigger.pack())

    # --- crash semantics (see retries.py) ---------------------------------------------------------------

    def on_executor_lost(self, lost: ExecutorLost) -> None:
        """An executor process died (the supervisor says so, or its pid is gone): place nothing more there,
        and dispatch every call that used it again, or fail it once out of attempts."""
        if (lost.executor_id, lost.pid) in self.lost_pids:
            return  # heard already (from the supervisor and from the pid check)
        self.lost_pids.add((lost.executor_id, lost.pid))
        self.counters["executors_lost"] += 1
        self.policy.forget_lost(lost.executor_id, lost.pid)
        now = time.monotonic()
        self.wait_for_executors_until = max(self.wait_for_executors_until, now + DISPATCH_WAIT_S)
        calls = self.in_flight.take_lost(lost.address)
        log.warning("%s (pid %d) died (%s): dispatching its %d call(s) again", lost.executor_id, lost.pid,
                    lost.reason, len(calls))
        for call in calls:
            what = self.describe_loss(call, lost)
            # every executor of the call, the dead one's address too: its restarted process receives what its
            # peers had queued for the dead one, older attempts' triggers included
            executors = set(call.locations.values())
            if self.in_flight.out_of_attempts(call):
                self.counters["lost_calls"] += 1
                for address in executors:  # partial joins of a call that is over
                    self.peers.send(address, CallAborted(call.request.call_id).pack())
                self.reject(call.request, CallLost(
                    f"{what}; it was dispatched {call.attempt} times, the most allowed: the function may crash "
                    f"its executor (see `cbctl logs {lost.executor_id}`)"))
                continue
            self.counters["retried_calls"] += 1
            # before the new attempt's triggers, on the same sockets: the older attempt's partial joins go
            frame = CallRetried(call.request.call_id, call.attempt + 1).pack()
            for address in executors:
                self.peers.send(address, frame)
            try:
                self.on_call(call.request, call.depth, call.attempt + 1, now + DISPATCH_WAIT_S, what)
            except Exception:  # one bad call must not cost the others their retry
                log.exception("call %s: dispatching it again failed", call.request.call_id)

    @staticmethod
    def describe_loss(call: InFlightCall, lost: ExecutorLost) -> str:
        functions = ", ".join(fn for fn, address in call.locations.items() if address == lost.address)
        return (f"call {call.request.call_id} of {call.request.name!r}: {lost.executor_id} (pid {lost.pid}), which "
                f"ran {functions}, died ({lost.reason})")

    def check_executors_alive(self) -> None:
        """Timer work: an executor on this host whose process is gone is lost, whether or not a supervisor
        said so (a killed supervisor restarts nothing and tells no one)."""
        for view in list(self.policy.executors.values()):
            try:
                if view.host == self.policy.local_host and view.pid and not process_alive(view.pid):
                    self.on_executor_lost(ExecutorLost(view.executor_id, view.address, view.pid,
                                                       "its process is gone"))
            except Exception as exc:  # one bad entry must not cost the others their check, nor end the timer
                self.timers.failed(f"checking executor {view.executor_id}", exc)

    def report_load(self) -> None:
        """Timer work: the load report the head's supervisor autoscales from (load_report.py)."""
        if self.load_reporter is not None:
            outstanding = {v.executor_id: v.outstanding for v in self.policy.executors.values()}
            self.load_reporter.send(self.statuses, len(self.parked), outstanding=outstanding)

    def on_autoscale_mode(self, mode: AutoscaleMode) -> None:
        if mode.enabled != self.executors_may_start:
            log.info("autoscaling %s: a CPU call with no executor %s", "on" if mode.enabled else "off",
                     "waits for one to start" if mode.enabled else "fails at once")
        self.executors_may_start = mode.enabled

    def update_policy(self) -> None:
        """Timer work: the policy's periodic update, and the pins and unpins it decides; steal hints again for
        executors still backlogged (placement.py)."""
        self.apply(self.policy.periodic_update())
        self.send_hints(self.policy.rehint())

    def retry_parked(self) -> None:
        """Try each call that waits for an executor again (it parks itself again if there is still none, or
        fails past its deadline); on every status while any wait, and on the timer."""
        parked, self.parked = self.parked, []
        self.parked_ids.clear()
        for call in parked:
            try:
                self.on_call(call.request, call.depth, call.attempt, call.deadline, call.lost)
            except Exception:  # one bad call must not cost the others their retry, nor kill the timer
                log.exception("call %s: retrying it failed", call.request.call_id)

    def on_continue(self, message: ContinueCall) -> None:
        """A sink returned ``cbctl.Continue``: the rest of its call is a call of ``message.name`` under the
        same id and response address (the executor already checked the depth limit)."""
        self.counters["continuations"] = self.counters.get("continuations", 0) + 1
        # a continuation of a re-dispatched call keeps its attempt, or executors that saw the newer attempt
        # would drop its triggers as an older one's
        attempt = message.extras.get(ATTEMPT_KEY, 1)
        self.on_call(CallRequest(message.call_id, message.name, message.args, {}, message.response_address,
                                 message.store_result, message.consistency, [], message.extras),
                     depth=message.depth, attempt=attempt if type(attempt) is int and attempt > 0 else 1)

    def reject(self, request: CallRequest, exc: CbctlError) -> None:
        """Answer a call that cannot be dispatched where its caller looks: its response address, or the
        store for a ``store_result`` call (whose future reads only the store)."""
        result = CallResult(request.call_id, False, b"", type(exc).__name__, str(exc))
        if not request.store_result:
            self.peers.send(request.response_address, result.pack())
            return
        try:
            self.store.put(registry.result_key(request.call_id), {f: getattr(result, f) for f in result._FIELDS})
        except CbctlError as store_exc:
            log.warning("call %s: could not store its dispatch error: %s", request.call_id, store_exc)

    def answer_oversized(self, message: limits.Oversized) -> None:
        """A call whose frames together were over the bound (``process.receive_rest`` kept only its header): its
        caller gets ``MessageTooLarge`` at once instead of waiting for its timeout, when the header says who it
        is (a ``CallRequest``'s id, response address and ``store_result``); anything else was only counted."""
        data = message.header_data()
        if data is None or data[1] != CallRequest.KIND:
            return
        fields = dict(zip(CallRequest._FIELDS, data[2:]))
        call_id, response_address, store_result = (fields.get(f) for f in ("call_id", "response_address",
                                                                            "store_result"))
        if (type(call_id) is not str or type(response_address) is not str or type(store_result) is not bool
                or not (response_address == "" or is_address(response_address))):
            return
        request = CallRequest(call_id, "", b"", {}, response_address, store_result, "lww", [])
        self.reject(request, MessageTooLarge(message.text))

    def on_register_function(self, request: RegisterFunction) -> Any:
        record = self.function_record(request.name, request.code, request.options)
        self.save_registrations([record], [])
        return record.describe()

    def on_register_dag(self, request: RegisterDag) -> Any:
        self.refresh_registry()
        record = self.dag_record(request.name, request.functions, request.edges, request.options, self.functions)
        self.save_registrations([], [record])
        return record.describe()

    def on_deploy(self, request: Deploy) -> Any:
        """A deploy file's functions and DAGs: all checked first, then saved and switched to in one handler, so
        no call is placed with some of them new and others old (this loop handles nothing in between)."""
        self.refresh_registry()
        records = []
        for entry in request.functions:
            if len(entry) != 3:
                raise InvalidArgument("a deploy's function entry is not [name, code, options]")
            records.append(self.function_record(*entry))
        functions = {**self.functions, **{r.name: r for r in records}}
        dag_records = []
        for entry in request.dags:
            if len(entry) != 4:
                raise InvalidArgument("a deploy's DAG entry is not [name, functions, edges, options]")
            dag_records.append(self.dag_record(*entry, functions))
        self.save_registrations(records, dag_records)
        return {"functions": [r.describe() for r in records], "dags": [d.describe() for d in dag_records]}

    def function_record(self, name: Any, code: Any, options: Any) -> registry.FunctionRecord:
        """A new version of function ``name``, checked (nothing is saved yet)."""
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise InvalidArgument(f"function name {name!r} is invalid: use a non-empty name not starting with '__'")
        if not isinstance(code, bytes) or not isinstance(options, dict):
            raise InvalidArgument(f"function {name!r}: its code must be bytes and its options a dict")
        if name in self.dags or registry.load_dag(self.store, name) is not None:  # (another scheduler's, too)
            raise InvalidArgument(f"{name!r} is already a DAG's name: give the function another name")
        if options.get("gpu") and not any(v.executor_type == "gpu" for v in self.policy.executors.values()):
            raise NoExecutorAvailable(
                f"function {name!r} needs a GPU but this cluster has no GPU executor: "
                "start it with `cbctl up --gpu-executors N`")
        version = max(time.time_ns(), self.functions[name].version + 1 if name in self.functions else 0)
        return registry.FunctionRecord(
            name=name, code=code, version=version, gpu=bool(options.get("gpu")),
            batching=bool(options.get("batching")), is_class=bool(options.get("is_class")),
            init_args=options.get("init_args", b""), source_file=str(options.get("source_file", "")))

    def dag_record(self, name: Any, functions: Any, edges: Any, options: Any,
                   known: dict[str, registry.FunctionRecord]) -> registry.DagRecord:
        """DAG ``name`` over ``known`` functions, checked (nothing is saved yet)."""
        if not isinstance(name, str) or not isinstance(functions, list) or not isinstance(edges, list):
            raise InvalidArgument("a DAG needs a name, a list of functions and a list of edges")
        edges = edges if edges else [list(e) for e in chain_edges(functions)]
        shape = validate_dag(name, functions, edges, known)
        options = dict(options or {})
        if multiexec.OPTION in options:
            options[multiexec.OPTION] = multiexec.validate(name, shape.functions, options[multiexec.OPTION])
        if name in known:
            raise InvalidArgument(f"{name!r} is already a function's name: give the DAG another name")
        return registry.DagRecord(name, list(shape.functions), [list(e) for e in shape.edges], time.time_ns(),
                                  options)

    def save_registrations(self, functions: list[registry.FunctionRecord], dags: list[registry.DagRecord]) -> None:
        """Save checked records and make them current together; prune versions no call can need any more."""
        for record in functions:
            registry.save_function(self.store, record)
        for dag in dags:
            registry.save_dag(self.store, dag)
        for record in functions:
            self.functions[record.name] = record
        for dag in dags:
            self.dags[dag.name] = dag
        self.plans.clear()
        if dags:
            self.apply(self.policy.set_wanted(pinned_functions(self.functions, self.dags)))
            self.apply(self.policy.ensure_pinned())  # pins settle as the executors answer, within milliseconds
        if functions:
            try:
                registry.prune_versions(self.store, [r.name for r in functions], time.time_ns(),
                                        int(FUNCTION_VERSION_KEEP_S * 1e9))
            except CbctlError as exc:  # only housekeeping: the next registration prunes again
                log.warning("could not prune old versions of %s: %s", ", ".join(r.name for r in functions), exc)

    def on_list(self, _request: ListRequest) -> Any:
        self.refresh_registry()
        return {
            "functions": [{**f.describe(), "pinned": self.policy.locations_of(f.name)}
                          for f in sorted(self.functions.values(), key=lambda f: f.name)],
            "dags": [d.describe() for d in sorted(self.dags.values(), key=lambda d: d.name)],
        }

    def on_remove(self, request: RemoveRequest) -> Any:
        self.refresh_registry()
        name = request.name
        if name in self.dags or name in self.functions:
            triggers.check_not_triggered(self.store, name)
        if name in self.dags:
            self.store.delete(registry.DAG_PREFIX + name)
            kind = "dag"
        elif name in self.functions:
            users = [d.name for d in self.dags.values() if name in d.functions]
            if users:
                raise InvalidArgument(f"function {name!r} is used by DAG(s) {', '.join(users)}: remove those first "
                                      "with `cbctl rm NAME`")
            self.store.delete(registry.FUNCTION_PREFIX + name)
            registry.prune_versions(self.store, [name], time.time_ns(), 0, remove_all=True)
            kind = "function"
        else:
            raise NoSuchFunction(f"no function or DAG is registered as {name!r}: see `cbctl ls`")
        self.refresh_registry()
        return {"removed": name, "kind": kind}

    def on_cluster_info(self, _request: ClusterInfoRequest) -> Any:
        now = time.monotonic()
        executors = {e: dict(_status_dict(s), status_age_s=now - seen) for e, (s, seen) in self.statuses.items()}
        return {
            "scheduler": self.config.name,
            "uptime_s": time.time() - self.started,
            "counters": dict(self.counters, dropped_sends=self.peers.dropped, frames_sent=self.peers.sent,
                             bytes_sent=self.peers.sent_bytes, largest_parsed_bytes=self.largest_parsed),
            "rates": self.rates.rates(now, self.counters),
            "name_calls": dict(self.name_calls),
            "name_rates": self.name_rates.rates(now, self.name_calls),
            # calls it would dispatch again if an executor died, and calls waiting for an executor (retries.py)
            "calls_remembered": len(self.in_flight),
            "calls_waiting": len(self.parked),
            "in_flight": in_flight_estimate(s for s in executors.values() if s["status_age_s"] < TOP_SILENT_AFTER_S),
            "executors": executors,
            "registry": {"functions": {n: {"gpu": f.gpu} for n, f in self.functions.items()},
                         "dags": {n: list(d.functions) for n, d in self.dags.items()}},
            "policy": self.policy.describe(),
        }

    def on_describe_cluster(self, _request: DescribeCluster) -> Any:
        """The cluster file, for a client on another machine (``cbctl.connect(address=...)``): the store's and
        the schedulers' addresses, the limits, the version. It holds no key."""
        found = cluster.ClusterFile.read(Path(self.config.home))
        if found is None:
            raise ClusterNotRunning("the cluster file is missing on the head: the cluster is starting or stopping")
        return dataclasses.asdict(found)

    def on_status(self, status: ExecutorStatus) -> None:
        if self.lost_pids and (status.executor_id, status.pid) in self.lost_pids:
            return  # sent before its process died, read after: it must not bring the dead executor back
        view = self.policy.executors.get((host_of(status.address, self.policy.local_host), status.executor_id))
        if (view is not None and view.pid and view.pid != status.pid
                and (status.executor_id, view.pid) not in self.lost_pids):
            # restarted before this scheduler heard of the death (the supervisor's word lost, e.g. refused, and
            # the pid check not run yet): the old process's calls are still to be dispatched again
            self.on_executor_lost(ExecutorLost(status.executor_id, view.address, view.pid, "restarted"))
        self.statuses[status.executor_id] = (status, time.monotonic())
        self.policy.process_status(status)
        if self.parked:
            self.retry_parked()  # this executor may take what waits for one
        if not status.running and status.metrics.get("recycling"):
            # over --executor-memory-mb: a fresh process replaces it, so calls wait for it rather than fail
            self.wait_for_executors_until = max(self.wait_for_executors_until, time.monotonic() + DISPATCH_WAIT_S)
        if not status.running:
            # the policy no longer places work there; this ack, behind every trigger sent there on the same
            # socket, tells the departing executor that nothing more will come from this scheduler
            self.peers.send(status.address, LeavingAck(self.address).pack())

    def on_load(self, load: ExecutorLoad) -> None:
        """An executor turned idle, busy or backlogged (placement.py): recount it, and hint idle executors to
        take a call each from a backlogged one."""
        if self.lost_pids and (load.executor_id, load.pid) in self.lost_pids:
            return
        self.send_hints(self.policy.process_load(load))

    def send_hints(self, hints: list[tuple[ExecutorView, str]]) -> None:
        for thief, victim in hints:
            self.peers.send(thief.address, StealHint(victim).pack())

    def on_call_moved(self, moved: CallMoved) -> None:
        """An executor handed a queued step to another: a retry after that one dies must find it there."""
        call = self.in_flight.calls.get(moved.call_id)
        if call is not None and call.locations.get(moved.function) == moved.source:
            call.locations = {**call.locations, moved.function: moved.to}  # the trigger's dict is shared
        self.policy.call_moved(moved.source, moved.to)

    def on_pin_response(self, response: PinResponse) -> None:
        if not response.accepted:
            log.info("%s refused to pin %s: %s", response.executor_id, response.function, response.reason)
        self.apply(self.policy.pin_result(response.executor_id, response.function, response.accepted))

    def apply(self, actions: list[PinAction]) -> None:
        """Send the policy's pin and unpin decisions to the executors."""
        for action in actions:
            if action.pin:
                record = self.functions.get(action.function)
                frame = PinRequest(action.function, record.version if record else 0, self.address).pack()
                log.info("pinning %s on %s", action.function, action.executor_id)
            else:
                frame = UnpinRequest(action.function).pack()
                log.info("unpinning %s from %s", action.function, action.executor_id)
            self.peers.send(action.address, frame)

    CONTROL = {
        RegisterFunction: on_register_function,
        RegisterDag: on_register_dag,
        Deploy: on_deploy,
        ListRequest: on_list,
        RemoveRequest: on_remove,
        ClusterInfoRequest: on_cluster_info,
        AddTrigger: on_add_trigger,
        ListTriggers: on_list_triggers,
        RemoveTrigger: on_remove_trigger,
        DescribeCluster: on_describe_cluster,
    }

    def handle(self, sock: zmq.Socket, parts: list[Any]) -> None:
        frame = parts[-1]
        if type(frame) is list:  # a multi-frame message: the scheduler parses its header, and forwards the rest
            for part in frame[1:]:
                if type(part) is shared.Handle:
                    self.counters["shared_memory_bytes"] += part.size
                self.counters["out_of_band_bytes"] += shared.part_nbytes(part)
            parsed = len(frame[0])
        else:
            parsed = len(frame)
        if parsed > self.largest_parsed:
            self.largest_parsed = parsed
        try:
            message: Message = unpack(frame)
        except ProtocolError as exc:
            self.counters["protocol_errors"] += 1
            rejected.warning("dropped a bad frame: %s", exc)
            if type(frame) is limits.Oversized:
                self.answer_oversized(frame)
                return
            refusal = version_refusal(frame, "the scheduler")  # a peer of another version is told why
            if refusal is not None:
                sock.send_multipart([*parts[:-1], refusal])
            return
        kind = type(message)
        if kind is CallRequest:
            self.counters["call_request_bytes"] += parsed  # (tests count bytes per call with it)
            self.on_call(message)
        elif kind is ContinueCall:
            self.on_continue(message)
        elif kind is ExecutorStatus:
            self.on_status(message)
            sock.send_multipart([*parts[:-1], StatusAck(message.executor_id).pack()])
        elif kind is ExecutorLoad:
            self.on_load(message)
        elif kind is PinResponse:
            self.on_pin_response(message)
        elif kind is CallMoved:
            self.on_call_moved(message)
        elif kind is ExecutorLost:
            self.on_executor_lost(message)
        elif kind is AutoscaleMode:
            self.on_autoscale_mode(message)
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
            rejected.warning("the scheduler does not serve %s", kind.__name__)


def check_source_args(plan: CallPlan, source_args: dict[str, bytes]) -> None:
    """Per-source arguments may only name the call's source functions (a typo would otherwise be ignored
    and the source would silently get the shared arguments)."""
    unknown = [fn for fn in source_args if fn not in plan.sources]
    if unknown:
        raise InvalidArgument(f"arguments given for {', '.join(map(repr, unknown))}, which "
                              f"{'is' if len(unknown) == 1 else 'are'} not a source of {plan.name!r}: "
                              f"its sources are {', '.join(plan.sources)}")


def pinned_functions(functions: dict[str, registry.FunctionRecord],
                     dags: dict[str, registry.DagRecord]) -> dict[str, bool]:
    """The functions the policy keeps pinned (those of registered DAGs), with their gpu flags."""
    return {fn: functions[fn].gpu for dag in dags.values() for fn in dag.functions if fn in functions}


def _status_dict(status: ExecutorStatus) -> dict[str, Any]:
    return {f: getattr(status, f) for f in status._FIELDS}


def main(config: ProcessConfig) -> None:
    setup_logging(config)
    shutdown = ShutdownFlag()
    shared.attach_on_unpack = False  # calls' values go on to executors as the handles that came
    context = new_context(config)
    store = connect_store(context, config.store_address, writer_id=config.name)
    scheduler = Scheduler(config, context, store)
    sock = new_socket(context, zmq.ROUTER)
    # a peer sending a frame past this loses its connection, instead of costing the scheduler its memory
    sock.setsockopt(zmq.MAXMSGSIZE, limits.backstop_bytes(config.options.get(limits.OPTION, MAX_MESSAGE_BYTES)))
    address = scheduler.address = config.bind(sock)
    report_ready(context, config, address)
    if config.supervisor_address:
        scheduler.load_reporter = LoadReporter(context, config.supervisor_address, config.name)
    refresh_store = connect_store(context, config.store_address, writer_id=config.name,
                                  request_timeout_s=REGISTRY_REFRESH_TIMEOUT_S, retry_budget_s=0.0)
    freeze_startup_heap()
    receiver = Receiver(sock, multipart=True, drain=False)
    next_refresh = time.monotonic() + REGISTRY_REFRESH_S
    next_policy_update = time.monotonic() + scheduler.policy.settings.update_interval_s
    while not shutdown.requested:
        for parts in receiver.receive(100):
            try:
                scheduler.handle(sock, parts)
            except Exception:
                log.exception("error while handling a message")
        now = time.monotonic()
        scheduler.rates.maybe_sample(now, scheduler.counters)  # returns at once until a sample is due
        scheduler.name_rates.maybe_sample(now, scheduler.name_calls)
        if now >= next_policy_update:
            next_policy_update = now + scheduler.policy.settings.update_interval_s
            timers = scheduler.timers
            timers.run(scheduler.check_executors_alive)
            timers.run(scheduler.in_flight.expire)
            if scheduler.parked:
                timers.run(scheduler.retry_parked)  # those past their deadline fail now
            timers.run(scheduler.update_policy)
        if scheduler.load_reporter is not None and now >= scheduler.load_reporter.next_due:
            scheduler.timers.run(scheduler.report_load)
        if now >= next_refresh:
            next_refresh = now + REGISTRY_REFRESH_S
            try:
                scheduler.refresh_registry(refresh_store)
            except CbctlError as exc:
                log.warning("registry refresh failed: %s", exc)
    # warm stop: what already arrived is handled (calls dispatched, requests answered), not dropped, and what
    # that sends gets STOP_LINGER_S to leave
    for parts in drain(sock):  # every message waiting (the receiver hands out one at a time)
        try:
            scheduler.handle(sock, parts)
        except Exception:
            log.exception("error while handling a message")
    sock.setsockopt(zmq.LINGER, int(STOP_LINGER_S * 1000))
    sock.close()
    refresh_store.close()
    if scheduler.load_reporter is not None:
        scheduler.load_reporter.close()
    scheduler.peers.close(linger_s=STOP_LINGER_S)
    store.close()
    context.term()
    log.info("scheduler stopped")

