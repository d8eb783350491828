"""The executor: one process, one thread of user code, Cloudburst's executor thread.

Its loop: drain the PULL socket (triggers, pins, direct messages), run what is ready (a function runs
once every upstream trigger of its call has arrived), pass each result on (to the successors' executors,
or straight to the caller for the sink), and report a status to every scheduler about once a second.
A user exception becomes an error result for the caller and never stops the loop.

Long on purpose: ``Executor`` is one state machine (the ready queue, the joins, the pinned functions, the
peers) whose message handlers, runner and user-library hooks all read and change that state from one thread.
What has its own state or none lives beside it: ``sessions``, ``cache``, ``batching``, ``continuation``,
``departure``, ``status`` (the reports), ``extras`` (the trigger check), ``host`` (what the helpers see).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import psutil
import zmq

from cbctl.errors import (
    CbctlError,
    ConsistencyError,
    DecodeError,
    InboxFull,
    InvalidArgument,
    NoSuchFunction,
    ProtocolError,
)
from cbctl.runtime import cluster, multiexec, registry, step_records, user_errors
from cbctl.runtime.code_loading import load_target
from cbctl.runtime.continuation import Continue
from cbctl.runtime.defaults import (
    CACHED_KEYS_REPORTED,
    DEPARTURE_LINGER_S,
    EXECUTOR_RECYCLE_EXIT_CODE,
    FUNCTION_VERSION_KEEP_S,
    MAX_BATCH,
    MAX_CONTINUATIONS,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_ERROR_TRACEBACK_CHARS,
    MAX_MESSAGE_BYTES,
    STORE_REQUEST_TIMEOUT_S,
    VERSION_FETCH_TIMEOUT_S,
)
from cbctl.runtime.executor import batching, continuation, direct, stealing
from cbctl.runtime.executor.cache import CachedStore, StoreEpochProbe
from cbctl.runtime.executor.departure import Departure, Peer
from cbctl.runtime.executor.direct import Inbox
from cbctl.runtime.executor.extras import check_trigger_extras
from cbctl.runtime.executor.host import LoadedFunction
from cbctl.runtime.executor.plans import Plans
from cbctl.runtime.executor.sessions import SessionManager
from cbctl.runtime.executor.status import StatusReporter
from cbctl.runtime.executor.userlib import UserLibrary
from cbctl.runtime.lattices import lattice_from_wire
from cbctl.runtime.metrics import ExecutorMetrics
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
from cbctl.runtime.retries import ATTEMPT_KEY, AttemptFilter
from cbctl.runtime.store_client import StoreAccess
from cbctl.runtime.stores import connect_store
from cbctl.runtime.wire import limits, serialization, shared
from cbctl.runtime.wire.messages import (
    TRIGGER_DEPTH_EXTRA,
    CallAborted,
    CallResult,
    CallRetried,
    DagTrigger,
    DirectMessage,
    DirectRefused,
    ExecutorLeaving,
    ExecutorStatus,
    KeyDropped,
    KeyUpdate,
    LeavingAck,
    Message,
    NothingToSteal,
    PinRequest,
    PinResponse,
    SnapshotRelease,
    StealHint,
    StealRequest,
    StoreEpoch,
    UnpinRequest,
    VersionRequest,
    VersionResponse,
    unpack,
)

log = logging.getLogger(__name__)
rejected = RejectedFrameLog(log)  # warnings about frames this process drops, rate-limited

#: Seconds a partly-triggered DAG step waits for its other triggers before it is dropped.
JOIN_TIMEOUT_S = 600.0
#: Older versions of functions an executor keeps loaded for calls dispatched before a redeploy (least recently
#: used first out; one that is needed again is loaded again).
OLDER_VERSIONS_KEPT = 8
#: Seconds a step waits, before its user code runs, for zmq to finish sending the large results earlier steps
#: returned (sent from the arrays' own memory, which the next step's code could change). A transfer to a live
#: peer takes milliseconds (its zmq I/O thread reads whether or not its loop is busy); a dead peer's is dropped.
SENT_BEFORE_NEXT_STEP_S = 5.0


class Executor:
    def __init__(self, config: ProcessConfig, context: zmq.Context, store: StoreAccess, address: str) -> None:
        self.config = config
        # an executor on a joined host (`cbctl join`) is HOST/executor-N, so ids stay unique across hosts
        self.host = config.options.get("host", "")
        self.executor_id = f"{self.host}/{config.name}" if self.host else config.name
        self.executor_type = config.options.get("executor_type", "cpu")
        self.address = address
        self.store = store
        self.peers = PeerSockets(context)
        self.userlib = UserLibrary(self)
        self.functions: dict[str, LoadedFunction] = {}
        self.older: collections.OrderedDict[tuple[str, int], LoadedFunction] = collections.OrderedDict()
        self.pinned: set[str] = set()
        self.joins: dict[tuple[str, str], dict[str, DagTrigger]] = {}
        self.join_started: dict[tuple[str, str], float] = {}
        self.aborted: dict[str, float] = {}  # failed calls -> when: their late triggers are dropped, not joined
        self.attempts = AttemptFilter()  # calls dispatched again after an executor died (retries.py)
        self.plans = Plans()  # each DAG's upstream functions and successors, by function (plans.py)
        self.ready: collections.deque[tuple[DagTrigger, list[DagTrigger]]] = collections.deque()
        self.inbox = Inbox()  # direct messages for the running function (direct.py)
        self.deferred: list[bytes] = []  # frames that arrived while user code waited in recv
        self.sock: zmq.Socket | None = None
        self.executor_addresses: dict[str, str] = {}
        self.metrics = ExecutorMetrics(self.executor_type, config.options.get("device"))
        self.protocol_errors = 0
        self.max_batch = max(1, int(config.options.get("max_batch", MAX_BATCH)))
        self.max_continuations = int(config.options.get("max_continuations", MAX_CONTINUATIONS))
        self.max_message_bytes = int(config.options.get(limits.OPTION, MAX_MESSAGE_BYTES))  # per encoded value
        self.multiexec = multiexec.MultiExecState()
        self.scheduler_sockets: list[zmq.Socket] = []  # the status reporter's DEALERs: continuations go there
        self.frames_received = 0  # with peers.sent, what a test counts messages per call with
        # the cache in front of the store, and the consistency modes' per-call state (cache.py, consistency.py)
        self.cached = CachedStore(store, self.executor_id, address, int(config.options.get("cache_mb", 64)) << 20)
        # notices a restarted store (on Redis: a pub/sub reconnect, which StoreEpoch frames also report at once)
        probe = getattr(store, "epoch_probe", None)
        self.store_probe = probe() if probe is not None else StoreEpochProbe(context, config.store_address)
        self.sessions = SessionManager(self.cached, address, self.executor_id, self.fetch_version, self.peers.send)
        self._version_ids = itertools.count(1)
        self.awaited_version: tuple[int, VersionResponse | None] | None = None  # (req_id, reply) of fetch_version
        self.departure = Departure(self.executor_id, address)  # this executor's leaving, and its peers'
        self.queued_here = False  # the step running (or last run) passed its result to a step here (deliver)
        self.running: DagTrigger | None = None  # the step run_next is running: answered if the runtime fails it
        self.recycling = False  # leaving because of --executor-memory-mb (a fresh process replaces it)
        # placement by outstanding work (stealing.py): load reports to the schedulers (not with Cloudburst's
        # policy, which has no use for them), and steps handed to idle peers
        self.sharing = stealing.WorkSharing(self, config.options.get("load_reports", True))
        self.recorder = step_records.StepRecorder(Path(config.home), self.executor_id) \
            if step_records.enabled() else None

    # --- messages ------------------------------------------------------------------------------------

    def on_frame(self, frame: bytes) -> None:
        self.frames_received += 1
        try:
            message: Message = unpack(frame)
        except ProtocolError as exc:
            self.protocol_errors += 1
            rejected.warning("dropped a bad frame: %s", exc)
            return
        handler = self.HANDLERS.get(type(message))
        if handler is None:
            self.protocol_errors += 1
            rejected.warning("the executor does not serve %s", type(message).__name__)
            return
        try:
            handler(self, message)
        except Exception as exc:  # a well-formed frame with ill-typed fields must not take the executor down
            self.protocol_errors += 1
            rejected.warning("dropped a malformed %s: %s: %s", type(message).__name__, type(exc).__name__, exc)

    def on_trigger(self, trigger: DagTrigger) -> None:
        sharing = self.sharing
        sharing.last_call = trigger.call_id  # (load reports name it: a scheduler knows what they counted)
        if sharing.asked_until:
            sharing.asked_until = 0.0  # busy now (with the step asked for, or another): hints wait till idle
        extras = trigger.extras
        if extras:
            check_trigger_extras(extras)
        if self.aborted and trigger.call_id in self.aborted:
            return  # another step of this call failed: its caller has the error already
        if self.attempts.latest or (extras and ATTEMPT_KEY in extras):
            admitted, newer = self.attempts.admit(trigger.call_id, extras)
            if not admitted:
                return  # an older attempt's, still on its way: the newer attempt runs this step
            if newer:  # what an older attempt left waiting for its other triggers must not join this one's
                self.drop_joins(trigger.call_id)
        if extras and multiexec.EXTRAS_KEY in extras and self.multiexec.on_trigger(trigger, self.ready):
            return
        edges = trigger.edges
        shape = self.plans.shape(trigger.dag, edges) if edges else None
        if shape is None or trigger.function not in shape.joining:  # one upstream trigger (or none): it runs
            self.ready.append((trigger, [trigger]))
            return
        upstream = shape.upstream[trigger.function]
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
        started = time.perf_counter_ns()
        try:
            if self.departure.leaving:
                raise CbctlError(f"{self.executor_id} is leaving")
            self.load(request.function, request.version)
            self.pinned.add(request.function)
            reply = PinResponse(self.executor_id, request.function, True)
        except CbctlError as exc:
            reply = PinResponse(self.executor_id, request.function, False, str(exc))
        self.metrics.record_pin(time.perf_counter_ns() - started)
        self.send_to_scheduler(request.scheduler_address, reply.pack())

    def send_to_scheduler(self, address: str, frame: bytes) -> None:
        """A reply to a scheduler, on the status reporter's DEALER to it: a scheduler's ROUTER takes no
        PUSH peers, and sharing the status socket orders the reply after this executor's earlier statuses."""
        try:
            sock = self.scheduler_sockets[self.config.scheduler_addresses.index(address)]
        except (ValueError, IndexError):
            log.warning("no connection to scheduler %s: reply dropped", address)
            return
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.peers.dropped += 1

    def on_unpin(self, request: UnpinRequest) -> None:
        self.pinned.discard(request.function)

    def on_direct(self, message: DirectMessage) -> None:
        size = len(message.body)
        verdict = self.inbox.admit(message.sent_ns, size)
        if verdict == direct.ACCEPT:
            try:
                self.inbox.add(message.sender, serialization.decode(message.body), size)
                return
            except DecodeError as exc:
                verdict = str(exc)
        if verdict != direct.STALE and message.reply_address:
            self.peers.send(message.reply_address,
                            DirectRefused(self.executor_id, message.sent_ns, verdict).pack())

    def on_direct_refused(self, message: DirectRefused) -> None:
        if not self.inbox.on_refused(message.sent_ns, f"{message.receiver} refused a message: {message.reason}"):
            rejected.warning("%s refused a message sent by a function that has returned since: %s",
                             message.receiver, message.reason)

    def on_peer_leaving(self, message: ExecutorLeaving) -> None:
        self.peers.send(message.address, self.departure.on_peer_leaving(message))

    def on_leaving_ack(self, message: LeavingAck) -> None:
        self.departure.on_ack(message)

    def on_key_update(self, update: KeyUpdate) -> None:
        self.cached.on_push(update.key, update.lattice)

    def on_store_epoch(self, message: StoreEpoch) -> None:
        self.cached.on_store_epoch(message.epoch)

    def on_key_dropped(self, message: KeyDropped) -> None:
        self.cached.on_dropped(message.key)

    def on_version_request(self, request: VersionRequest) -> None:
        self.sessions.serve_version(request)

    def on_version_response(self, response: VersionResponse) -> None:
        log.debug("late version response %d dropped", response.req_id)  # its fetch timed out already

    def on_snapshot_release(self, release: SnapshotRelease) -> None:
        self.sessions.release(release)

    def on_call_aborted(self, message: CallAborted) -> None:
        self.aborted[message.call_id] = time.monotonic()
        self.drop_joins(message.call_id)

    def on_call_retried(self, message: CallRetried) -> None:
        _, newer = self.attempts.admit(message.call_id, {ATTEMPT_KEY: message.attempt})
        if newer:
            self.drop_joins(message.call_id)

    # --- load reports and work stealing (stealing.py, ``WorkSharing`` does the work) --------------------

    def on_steal_hint(self, hint: StealHint) -> None:
        self.sharing.on_hint(hint)

    def on_steal_request(self, request: StealRequest) -> None:
        self.sharing.hand_over_queued(request, keep=1)  # between steps: ready[0] runs next, the rest may go

    def on_steal_request_busy(self, request: StealRequest) -> None:
        self.sharing.hand_over_queued(request, keep=0)  # from within a running step: every waiting one may go

    def on_nothing_to_steal(self, message: NothingToSteal) -> None:
        self.sharing.on_nothing_to_steal(message)

    def drop_joins(self, call_id: str) -> None:
        for key in [k for k in self.joins if k[0] == call_id]:
            del self.joins[key], self.join_started[key]

    HANDLERS = {DagTrigger: on_trigger, PinRequest: on_pin, UnpinRequest: on_unpin, DirectMessage: on_direct,
                DirectRefused: on_direct_refused,
                ExecutorLeaving: on_peer_leaving, LeavingAck: on_leaving_ack, KeyUpdate: on_key_update,
                StoreEpoch: on_store_epoch, KeyDropped: on_key_dropped,
                VersionRequest: on_version_request, VersionResponse: on_version_response,
                SnapshotRelease: on_snapshot_release, CallAborted: on_call_aborted, CallRetried: on_call_retried,
                StealHint: on_steal_hint, StealRequest: on_steal_request, NothingToSteal: on_nothing_to_steal}

    # --- running -------------------------------------------------------------------------------------

    def load(self, name: str, version: int) -> LoadedFunction:
        """Function ``name`` at exactly ``version`` (0: whichever is loaded, else the latest): a call runs the
        versions current when it was dispatched, even when a deploy replaced them since (see registry.py).
        ``functions`` holds the newest version loaded; ``older`` the few older ones calls still asked for."""
        loaded = self.functions.get(name)
        if loaded is not None and (loaded.record.version == version or not version):
            return loaded
        if loaded is not None and version < loaded.record.version:
            older = self.older.get((name, version))
            if older is not None:
                self.older.move_to_end((name, version))
                return older
        record = registry.load_function(self.store, name)
        if record is not None and version and record.version != version:
            record = registry.load_function_version(self.store, name, version)
            if record is None:
                raise NoSuchFunction(f"version {version} of function {name!r}, current when this call was "
                                     f"dispatched, is no longer kept (it was replaced over "
                                     f"{FUNCTION_VERSION_KEEP_S:.0f} s ago): call again")
        if record is None:
            raise NoSuchFunction(f"function {name!r} is not registered (removed while the call was under way?)")
        try:
            target = load_target(record)
        except Exception as exc:
            raise InvalidArgument(f"function {name!r} could not be loaded on {self.executor_id}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        fresh = LoadedFunction(record, target)
        if loaded is None or record.version > loaded.record.version:
            self.functions[name] = fresh
        else:
            self.older[(name, record.version)] = fresh
            while len(self.older) > OLDER_VERSIONS_KEPT:
                self.older.popitem(last=False)
        return fresh

    def run_next(self) -> None:
        trigger, inputs = self.ready.popleft()
        self.queued_here = False
        if self.peers.unsent and not self.peers.wait_sent(SENT_BEFORE_NEXT_STEP_S):
            # the step may change an array an earlier one returned, which zmq still sends from its memory
            log.warning("results sent from their arrays' memory were not sent within %.0f s: running %s anyway",
                        SENT_BEFORE_NEXT_STEP_S, trigger.function)
        self.running = trigger
        self.inbox.begin_step()
        started = time.perf_counter_ns()
        name = trigger.function
        ok = True
        self.sessions.begin(trigger, inputs)
        # the step's puts tell the store which call of a chain of storage-triggered calls made them (triggers.py)
        self.store.trigger_depth = trigger.extras.get(TRIGGER_DEPTH_EXTRA, 0) if trigger.extras else 0
        args = None
        try:
            loaded = self.load(name, trigger.versions.get(name, 0))
            if loaded.record.batching:
                batching.run_batch(self, loaded, (trigger, inputs), started)  # accounts its calls itself
                return
            args = self.arguments(trigger, inputs)
            result = loaded.target(self.userlib, *args)
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything, SystemExit included
            # KeyboardInterrupt, SystemExit, GeneratorExit too: the executor's own stop is a flag its signal
            # handler sets (process.ShutdownFlag), never an exception, so whatever is raised here is the user's
            ok = False
            # a wrong argument count gets a message that does not count cb (args is set: loaded is too)
            target = loaded.target if args is not None else None
            self.fail(trigger, user_errors.explain_call_error(exc, name, target, args))
        else:
            self.deliver(trigger, result)
        finished = time.perf_counter_ns()
        self.metrics.record_call(name, bool(trigger.dag), finished - started, ok)
        if self.recorder is not None:  # tests and benchmarks only (step_records.py)
            self.recorder.record(trigger.call_id, name, trigger.source, trigger.extras,
                                 time.monotonic() - (finished - started) / 1e9, time.monotonic())
        # the step is done: its trigger, and a large argument it holds, go now, not when the next step comes (an
        # argument lent through shared memory is its sender's to reuse once let go: wire/shared.py)
        self.running = self.sessions.trigger = None

    def next_is_queued_here(self) -> bool:
        """Whether the step to run next is the successor the step just run queued here (``deliver``), alone in
        the queue with nothing deferred, and not of a batching function (a batch takes every call of its
        function a poll queues): the loop may then run it before polling its socket."""
        if not self.queued_here or len(self.ready) != 1 or self.deferred:
            return False
        loaded = self.functions.get(self.ready[0][0].function)
        return loaded is not None and not loaded.record.batching

    def answer_failed_step(self, exc: Exception) -> None:
        """The step ``run_next`` was running failed in the runtime's own code, not the user's (a trigger whose
        extras this executor could not make sense of, a store gone mid-delivery): its caller gets the error now
        instead of waiting for ever. Logged in one line with where it happened, as a warning: the call's own
        trigger was at fault, not this process, which goes on serving."""
        trigger, self.running = self.running, None
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        place = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
        log.warning("call %s: step %s failed outside user code%s: %s: %s", trigger.call_id if trigger else "?",
                    trigger.function if trigger else "?", place, type(exc).__name__, _message_of(exc))
        if trigger is None:
            return
        result = CallResult(trigger.call_id, False, b"", "CbctlError",
                            f"the call failed in {self.executor_id} outside its function ({type(exc).__name__}: "
                            f"{_message_of(exc)}): see that executor's log", executor_id=self.executor_id)
        try:
            if trigger.store_result:
                self.store.put(registry.result_key(trigger.call_id), {f: getattr(result, f) for f in result._FIELDS})
            else:
                self.peers.send(trigger.response_address, result.pack())
        except Exception as again:  # noqa: BLE001 - the store may be what failed in the first place
            log.warning("call %s: its error could not be delivered either: %s", trigger.call_id, again)

    def arguments(self, trigger: DagTrigger, inputs: list[DagTrigger]) -> list[Any]:
        """A step's positional arguments: the call's for a source, else one per upstream result; ``Ref``s
        are resolved to their keys' values."""
        try:
            if not trigger.source:
                args = serialization.decode(trigger.payload)
                if type(args) is not list:
                    args = list(args)
            elif len(inputs) == 1:  # a chain's step (no comprehension: its frame costs more than the decode)
                args = [serialization.decode(inputs[0].payload)]
            else:
                args = [serialization.decode(t.payload) for t in inputs]
        except DecodeError as exc:
            raise serialization.renamed(exc, f"an argument of {trigger.function!r} on {self.executor_id}") from None
        ref = serialization.Ref
        for arg in args:
            if type(arg) is ref:
                return [self.read_key(a.key) if type(a) is ref else a for a in args]
        return args  # a fresh list: nothing to resolve

    def deliver(self, trigger: DagTrigger, result: Any) -> None:
        edges = trigger.edges
        successors = self.plans.shape(trigger.dag, edges).downstream.get(trigger.function, ()) if edges else ()
        if type(result) is Continue:
            continuation.hand_off(self, trigger, result, is_sink=not successors)
            return
        try:
            payload = serialization.encode(result)
        except BaseException as exc:  # noqa: BLE001 - a result's own __reduce__ is user code: it may raise anything
            self.fail(trigger, user_errors.unserializable_result(trigger.function, result, exc))
            return
        if len(payload) > self.max_message_bytes:  # the caller is told; the executor goes on
            self.fail(trigger, limits.too_large(len(payload), self.max_message_bytes,
                                                f"the result of function {trigger.function!r}"))
            return
        if not successors:
            self.respond(trigger, CallResult(trigger.call_id, True, payload, executor_id=self.executor_id))
            return
        sessions = self.sessions  # (no session opened: the successors get the extras this step got)
        extras = trigger.extras if sessions.session is None else sessions.outgoing_extras(trigger)
        for successor in successors:
            downstream = DagTrigger(trigger.call_id, trigger.dag, successor, trigger.locations, trigger.versions,
                                    trigger.edges, trigger.function, payload, trigger.response_address,
                                    trigger.store_result, trigger.consistency, extras)
            address = trigger.locations[successor]
            if self.departure.redirects:
                address = self.departure.route(address)  # its executor left: its heir runs the step
            if address == self.address:
                self.on_trigger(downstream)  # same executor: no socket hop
                self.queued_here = True
            else:
                self.peers.send(address, downstream.pack())

    def fail(self, trigger: DagTrigger, exc: BaseException) -> None:
        if isinstance(exc, CbctlError) and not isinstance(exc, InvalidArgument):
            error_type, remote_type = type(exc).__name__, ""
        else:
            error_type, remote_type = "FunctionError", type(exc).__name__
        text = user_errors.user_traceback(exc)  # the user's frames, not the executor's
        message = _message_of(exc)
        if len(message) > MAX_ERROR_MESSAGE_CHARS or len(text) > MAX_ERROR_TRACEBACK_CHARS:
            # the caller (and its terminal) gets a bounded text; the whole of it is kept here, once
            log.warning("call %s: %s failed with a %d-character message; the caller's copy is cut; in full:\n%s",
                        trigger.call_id, trigger.function, len(message), text)
            where = f"`cbctl logs {self.executor_id}`"
            message = user_errors.cut(message, MAX_ERROR_MESSAGE_CHARS, where)
            text = user_errors.cut(text, MAX_ERROR_TRACEBACK_CHARS, where, keep_tail=True)
        self.respond(trigger, CallResult(trigger.call_id, False, b"", error_type, message, text,
                                         self.executor_id, remote_type))
        if trigger.edges:
            self.abort_joins(trigger)

    def abort_joins(self, trigger: DagTrigger) -> None:
        """Tell every executor that runs a joining step of this call (one with several upstream functions)
        to drop what it holds for it; the results of the branches that did not fail would otherwise wait there
        for ``JOIN_TIMEOUT_S``."""
        joining = self.plans.shape(trigger.dag, trigger.edges).joining
        addresses = {trigger.locations[fn] for fn in joining if fn in trigger.locations}
        frame = CallAborted(trigger.call_id).pack()
        for address in addresses:
            if self.departure.redirects:
                address = self.departure.route(address)
            if address == self.address:
                self.on_call_aborted(CallAborted(trigger.call_id))
            else:
                self.peers.send(address, frame)

    def respond(self, trigger: DagTrigger, result: CallResult) -> None:
        extras = trigger.extras
        if extras or self.sessions.session is not None:  # (neither: no session state, nothing to release)
            session_extras = self.sessions.result_extras(trigger)  # the call ends here: snapshots go, writes return
            if session_extras:
                result.extras = session_extras
        if extras and multiexec.EXTRAS_KEY in extras:
            result = self.multiexec.on_result(trigger, result)  # gathers a multi-exec sink's results
            if result is None:
                return
        if trigger.store_result:
            if len(result.value) > self.max_message_bytes:  # a multi-exec sink's gathered list, say
                exc = limits.too_large(len(result.value), self.max_message_bytes,
                                       f"the result of call {trigger.call_id}")
                result = CallResult(trigger.call_id, False, b"", type(exc).__name__, str(exc), "", self.executor_id)
            fields = {f: getattr(result, f) for f in result._FIELDS}
            fields["value"] = serialization.inline(result.value)  # the store keeps values inline
            self.store.put(registry.result_key(trigger.call_id), fields)
        else:
            self.peers.send(trigger.response_address, result.pack())

    def expire_joins(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self.join_started.items() if now - t > JOIN_TIMEOUT_S]:
            log.warning("call %s: %s never got all its triggers; dropped", *key)
            del self.joins[key], self.join_started[key]
        for call_id in [c for c, t in self.aborted.items() if now - t > JOIN_TIMEOUT_S]:
            del self.aborted[call_id]
        self.attempts.expire(JOIN_TIMEOUT_S)
        for key in self.multiexec.expire(JOIN_TIMEOUT_S):
            log.warning("multi-exec gather %s never got all its results; dropped", key)

    def check_store_epoch(self, wait_s: float = 0.0) -> None:
        """Timer work: drop the cache if the store restarted since the last check (see cache.py). The timer
        never waits: it reads the answer to the previous interval's probe and sends the next one, because a
        wait here would stall whatever call arrives meanwhile (it showed in the chain's p99)."""
        epoch = self.store_probe.probe(wait_s)
        if epoch is not None:
            self.cached.on_store_epoch(epoch)

    # --- the user library's needs --------------------------------------------------------------------

    def read_key(self, key: str) -> Any:
        # pushes that arrived while user code runs first, so a function polling cb.get sees writes made meanwhile
        self.serve_while_busy(0.0)
        return self.sessions.read(key)

    def write_key(self, key: str, value: Any) -> bool:
        # a large value goes to the store as frames of its own where the store keeps them (README: Large values)
        encoded = serialization.encode(value, out_of_band=self.store.keeps_frames)
        limits.check_size(len(encoded), self.max_message_bytes, f"the value cb.put writes under key {key!r}")
        return self.sessions.write(key, encoded)

    def write_ephemeral(self, key: str, value: Any, ttl_s: float) -> None:
        """An ephemeral put (``store/ephemeral.py``): to the store's memory, last-writer-wins in every
        consistency mode, past the call's session (it is no version a repeatable read or causal call tracks)."""
        encoded = serialization.encode(value, out_of_band=self.store.keeps_frames)
        limits.check_size(len(encoded), self.max_message_bytes, f"the value cb.put writes under key {key!r}")
        self.cached.cache.discard(key)  # reads of it go to the store from now on
        self.store.put_ephemeral(key, self.store.new_lww(encoded, key), ttl_s)

    def serve_while_busy(self, timeout_s: float) -> bool:
        """While user code runs or waits (``cb.get``, ``cb.recv``, a repeatable-read version fetch), handle
        the frames that must not wait for it to return: store pushes, direct messages, peers' version
        requests (two executors fetching from each other cannot deadlock) and the version reply awaited.
        Everything else waits in ``deferred`` until the function returns. Returns whether anything came."""
        assert self.sock is not None
        sharing = self.sharing
        if sharing.edges is not None and sharing.edges.pending:  # a change the rate limit folded may be due
            sharing.observe(1)
        if not self.sock.poll(max(0, int(timeout_s * 1000))):
            return False
        for (frame,) in drain(self.sock):
            try:
                message = unpack(frame)
            except ProtocolError:
                self.protocol_errors += 1
                continue
            handler = self.SERVED_WHILE_BUSY.get(type(message))
            if handler is None:
                self.deferred.append(frame)
                if type(message) is DagTrigger:
                    sharing.deferred(message)
            else:
                handler(self, message)
        if sharing.edges is not None:  # a step queued behind this one makes the executor backlogged: say so
            sharing.observe(1)
        return True

    def fetch_version(self, address: str, call_id: str, key: str) -> tuple[bool, Any]:
        """The version of ``key`` that the executor at ``address`` keeps for repeatable-read call ``call_id``,
        as (found, lattice)."""
        req_id = next(self._version_ids)
        self.awaited_version = (req_id, None)
        self.peers.send(address, VersionRequest(req_id, call_id, key, self.address).pack())
        deadline = time.monotonic() + VERSION_FETCH_TIMEOUT_S
        try:
            while (reply := self.awaited_version[1]) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConsistencyError(f"repeatable read: the executor at {address} did not send the version "
                                           f"of {key!r} within {VERSION_FETCH_TIMEOUT_S:.0f} s: call again")
                self.serve_while_busy(remaining + 0.001)
        finally:
            self.awaited_version = None
        return reply.found, (None if reply.lattice is None else lattice_from_wire(reply.lattice))

    def on_awaited_version(self, response: VersionResponse) -> None:
        if self.awaited_version is not None and self.awaited_version[0] == response.req_id:
            self.awaited_version = (response.req_id, response)
        else:
            self.on_version_response(response)

    SERVED_WHILE_BUSY = {KeyUpdate: on_key_update, DirectMessage: on_direct, DirectRefused: on_direct_refused,
                         VersionRequest: on_version_request, VersionResponse: on_awaited_version,
                         KeyDropped: on_key_dropped, StealRequest: on_steal_request_busy,
                         StoreEpoch: on_store_epoch}

    def send_direct(self, executor_id: str, message: Any) -> None:
        address = self.executor_addresses.get(executor_id)
        if address is None:
            found = cluster.ClusterFile.read(Path(self.config.home))
            for entry in found.processes if found else ():
                if entry.role == "executor":
                    prefix = f"{entry.host}/" if entry.host else ""
                    self.executor_addresses[f"{prefix}executor-{entry.index}"] = entry.address
            address = self.executor_addresses.get(executor_id)
        if address is None:
            raise InvalidArgument(f"no executor {executor_id!r} in this cluster: ids are as cb.getid() returns")
        body = serialization.encode(message)
        limits.check_size(len(body), self.max_message_bytes, f"the message to {executor_id}")
        self.serve_while_busy(0.0)  # refusals of earlier sends first
        self.raise_refusals()
        sent_ns = time.time_ns()
        if address == self.address:
            verdict = self.inbox.admit(sent_ns, len(body))
            if verdict not in (direct.ACCEPT, direct.STALE):
                raise InboxFull(f"{executor_id} (this executor) refused a message: {verdict}")
            self.inbox.add(self.executor_id, message, len(body))
        elif not self.peers.send(address, DirectMessage(self.executor_id, body, sent_ns, self.address).pack()):
            raise InboxFull(f"the message to {executor_id} could not be queued: it is not reading (busy or gone)")

    def receive_direct(self, deadline: float | None) -> list[tuple[str, Any]]:
        self.serve_while_busy(0.0)
        self.raise_refusals()
        while not self.inbox.messages and deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.serve_while_busy(remaining + 0.001):
                break
        return self.inbox.take()

    def raise_refusals(self) -> None:
        refusals = self.inbox.take_refusals()
        if refusals:
            more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
            raise InboxFull(refusals[0] + more)

    # --- departure (see departure.py) ----------------------------------------------------------------

    def begin_departure(self) -> None:
        """SIGTERM: refuse pins from now on and tell every other executor to route around this one (the
        status reporter tells the schedulers, with running=False)."""
        found = cluster.ClusterFile.read(Path(self.config.home))
        # a pid is checked only where it means something: the head's processes, seen from the head (a joined
        # host's copy of the file names the head's pids; the head's file names joined hosts' executors)
        here = found is not None and found.is_local()
        executors = [Peer(e.address, e.pid if here and not e.host and not self.host else 0, e.index,
                          e.executor_type or "cpu")
                     for e in (found.processes if found else ()) if e.role == "executor"]
        # with their pids, so a scheduler that died (and cannot answer) is not waited for until the deadline
        pids = {e.address: e.pid for e in (found.processes if found else ())
                if e.role == "scheduler" and here and not self.host}
        schedulers = [Peer(address, pids.get(address, 0)) for address in self.config.scheduler_addresses]
        addresses, frame = self.departure.begin(executors, schedulers, self.executor_type)
        for address in addresses:
            self.peers.send(address, frame)
        log.info("leaving: waiting for %d peers to acknowledge; heir %s", len(self.departure.awaiting),
                 self.departure.heir or "(none)")

    def finish_departure(self) -> bool:
        """Whether this executor may exit now (queue empty, every peer acknowledged); if so, hands the DAG
        steps still waiting for inputs to the heir, where those inputs are redirected."""
        if self.ready or self.deferred:
            return False
        self.departure.forget_exited(process_alive)
        if not self.departure.may_exit():
            return False
        if self.departure.awaiting:
            log.warning("left without an answer from %s", ", ".join(sorted(self.departure.awaiting)))
        if self.joins and self.departure.heir:
            for arrived in self.joins.values():
                for trigger in arrived.values():
                    self.peers.send(self.departure.heir, trigger.pack())
            self.joins.clear()
            self.join_started.clear()
        return True

    def memory_over(self, limit_bytes: int) -> bool:
        """Whether this process's resident memory is over ``limit_bytes`` (checked after each call when
        ``--executor-memory-mb`` is set: a function that leaks, or caches too much, gets a fresh process)."""
        try:
            rss = psutil.Process().memory_info().rss
        except psutil.Error:
            return False
        if rss <= limit_bytes:
            return False
        log.warning("resident memory %d MiB is over --executor-memory-mb %d after a call: recycling this executor "
                    "(it finishes its queue and leaves; the supervisor starts a fresh one)", rss >> 20,
                    limit_bytes >> 20)
        return True

    # --- status --------------------------------------------------------------------------------------

    def status(self, running: bool) -> ExecutorStatus:
        """This executor's status; ends the metrics interval (see ``metrics.ExecutorMetrics.report``)."""
        report = self.metrics.report(collections.Counter(t.function for t, _ in self.ready))
        report["protocol_errors"], report["dropped_sends"] = self.protocol_errors, self.peers.dropped
        report["frames_sent"], report["frames_received"] = self.peers.sent, self.frames_received
        report["bytes_sent"] = self.peers.sent_bytes
        report["shared_memory"] = dict(shared.stats)  # values lent and mapped through shared memory (shared.py)
        report["cache"] = self.sessions.metrics()
        report["pending_joins"] = len(self.joins)
        report["steals"] = self.sharing.metrics()
        report["direct_dropped"], report["direct_refused"] = self.inbox.dropped, self.inbox.refused
        if self.recycling:
            report["recycling"] = True  # the schedulers park calls for its successor instead of failing them
        return ExecutorStatus(
            self.executor_id, self.address, self.executor_type, running, sorted(self.pinned),
            report["utilization"], len(self.ready), self.cached.cache.recent_keys(CACHED_KEYS_REPORTED), os.getpid(),
            report,
        )


def _message_of(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception's own ``__str__`` raises: the caller still gets its answer
    (an exception escaping ``fail`` would leave the call unanswered for ever)."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


def main(config: ProcessConfig) -> None:
    setup_logging(config)
    shutdown = ShutdownFlag()
    context = new_context(config)
    host = config.options.get("host", "")
    store = connect_store(context, config.store_address, writer_id=f"{host}/{config.name}" if host else config.name)
    sock = new_socket(context, zmq.PULL)
    # no MAXMSGSIZE backstop here, unlike the scheduler and the store: the store pushes merged lattices (a causal
    # key's concurrent values, a set that grew by merges), which may honestly exceed the limit on one value
    address = config.bind(sock)
    enable_pushes = getattr(store, "enable_pushes", None)  # a Redis store: pushes come from pub/sub
    if enable_pushes is not None:
        enable_pushes(context, sock, config.name)
    executor = Executor(config, context, store, address)
    executor.sock = sock
    reporter = StatusReporter(context, executor.status, config.scheduler_addresses)
    executor.scheduler_sockets = reporter.sockets
    executor.check_store_epoch(STORE_REQUEST_TIMEOUT_S)  # the epoch the cache starts with
    try:
        reporter.handshake()
    except TimeoutError as exc:
        report_ready(context, config, address, str(exc))
        raise SystemExit(1) from None
    report_ready(context, config, address)
    freeze_startup_heap()
    receiver = Receiver(sock)
    sharing = executor.sharing
    edges = sharing.edges
    memory_limit = int(config.options.get("memory_limit_mb", 0)) << 20  # `cbctl up --executor-memory-mb`; 0: off
    timers = TimerWork(log)
    unpolled = False  # this pass runs the successor the last step queued here without polling first
    while True:
        if not unpolled:
            wait_ms = 0 if executor.ready or executor.deferred else 100 if edges is None else edges.wait_ms(100)
            for frame in receiver.receive(wait_ms):
                executor.on_frame(frame)
            frame = None  # the last message's values are the steps' to hold (shared memory: wire/shared.py)
            sharing.deferred_triggers = sharing.deferred_movable = 0  # (a hint among them sees ``deferred``)
            while executor.deferred:
                executor.on_frame(executor.deferred.pop(0))
            if executor.ready and edges is not None:
                sharing.observe(0)  # turned busy (or backlogged): before it runs
        # (unpolled: nothing came since the last pass's observe, which saw the state this step starts in)
        if executor.ready:
            try:
                executor.run_next()
            except Exception as exc:  # the runtime's own failure (store gone mid-delivery, ...): answer, go on
                executor.answer_failed_step(exc)
            executor.inbox.end_step()  # what the function did not read is for no later call
            if memory_limit and not shutdown.requested and executor.memory_over(memory_limit):
                # leave as on SIGTERM (the status that says so says why); the supervisor starts a fresh one
                shutdown.requested = executor.recycling = True
            # a chain's next step queued here runs at once, its poll (a system call that finds nothing in a
            # sequential call) skipped; never two passes in a row, so a message waits one step at most
            unpolled = not unpolled and executor.queued_here and executor.next_is_queued_here()
        else:
            unpolled = False
        if edges is not None:
            sharing.observe(0)  # turned idle, or a folded change is due
        if reporter.due():
            timers.run(reporter.report, not shutdown.requested)
            timers.run(executor.expire_joins)
            timers.run(executor.sessions.maintain, time.monotonic())
            timers.run(executor.check_store_epoch)
            timers.run(shared.trim)  # pooled shared memory no value was lent through for a while
            if executor.recorder is not None:
                timers.run(executor.recorder.flush)
        if shutdown.requested and not executor.departure.leaving:
            # warm stop: the schedulers stop placing work here when they see running=False
            reporter.report(running=False)
            executor.begin_departure()
        if executor.departure.leaving and executor.finish_departure():
            break
    reporter.report(running=False)
    if executor.recorder is not None:
        executor.recorder.flush()
    reporter.close()
    executor.store_probe.close()
    executor.peers.close(linger_s=DEPARTURE_LINGER_S)
    store.close()
    sock.close()
    context.term()
    shared.close_pool()  # what this process lent and is taken stays mapped where it was taken
    log.info("executor stopped")
    if executor.recycling:
        raise SystemExit(EXECUTOR_RECYCLE_EXIT_CODE)
