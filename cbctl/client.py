"""The Python client: ``cbctl.connect()`` returns a ``Client`` that registers, calls and reads state.

Calls are asynchronous underneath: a ``CallRequest`` goes to the scheduler on a send-only DEALER and the
result comes back, from whichever executor ran the sink, to this client's own bound PULL socket, matched
by call id. No background thread: whichever caller is waiting takes the role of reading the PULL socket
and hands results to the other waiters (so a single-threaded caller pays no thread hop), and many calls,
from many threads, can be in flight at once. ``call()`` by a thread that finds no one reading takes a shorter
way (the hottest path: no future, no table entry, no handoff per frame; see ``Client.call``).

Long on purpose: it is one object, ``Client``, whose registration, calls and state share its sockets, locks and
call bookkeeping; the supervisor's control channel is ``control.py``.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle
import zmq

from cbctl.control import scale_cluster, supervisor_request
from cbctl.declare import (
    Declarations,
    PreparedDeploy,
    PreparedFunction,
    TriggerSpec,
    check_declaration,
    dag_options,
    function_name,
    prepare,
)
from cbctl.deploy_import import import_deploy_file
from cbctl.errors import (
    AuthenticationError,
    CallTimeout,
    CbctlError,
    ClusterNotRunning,
    DecodeError,
    FunctionError,
    InvalidArgument,
    InvalidDag,
    ProtocolError,
    error_from_wire,
)
from cbctl.runtime import cluster, registry
from cbctl.runtime.code_loading import source_file_of
from cbctl.runtime.consistency import LWW, ClientSession, reveal
from cbctl.runtime.consistency import MODES as CONSISTENCY_MODES
from cbctl.runtime.dag import chain_edges, validate_dag
from cbctl.runtime.defaults import (
    CALL_TIMEOUT_S,
    CLIENT_LIVENESS_CHECK_S,
    CLIENT_RESEND_CHECK_S,
    CONTROL_TIMEOUT_S,
    DEPLOY_IMPORT_TIMEOUT_S,
)
from cbctl.runtime.process import new_socket, process_alive, receive_rest, send_message
from cbctl.runtime.redis_store import url as redis_url
from cbctl.runtime.stores import connect_store
from cbctl.runtime.wire import auth, limits, serialization, shared
from cbctl.runtime.wire.frames import MULTIPART_MARK, Frames
from cbctl.runtime.wire.messages import (
    AddTrigger,
    CallRequest,
    CallResult,
    ClusterInfoRequest,
    ControlResponse,
    Deploy,
    DescribeCluster,
    ListRequest,
    ListTriggers,
    Message,
    RegisterDag,
    RegisterFunction,
    RemoveRequest,
    RemoveTrigger,
    unpack,
)

_PENDING = object()
#: Longest single wait on the response socket, in seconds, so the reading thread re-checks that the client is
#: open, the scheduler has not restarted or refused it and the cluster still runs.
_READ_SLICE_S = 0.05
_READ_SLICE_MS = 50


class CallFuture:
    """The result of ``call_async``: ``result(timeout)`` waits for it, ``done()`` says if it is in."""

    def __init__(self, client: Client, call_id: str, name: str, stored: bool = False) -> None:
        self._client = client
        self.call_id = call_id
        self.name = name
        self._stored = stored
        self._result: Any = _PENDING
        self._request = b""  # the packed CallRequest, sent again if its scheduler restarts before answering
        #: a stored result (``store_result``) is deleted from the store once this future has read it, so stored
        #: results do not pile up; cbctl's Cloudburst layer keeps them (Cloudburst's results stay in the KVS)
        self.delete_stored_after_read = False  # call_async sets it for its own store_result calls

    def done(self) -> bool:
        if self._result is _PENDING:
            self._client._poll_result(self, 0.0)
        return self._result is not _PENDING

    def result(self, timeout: float | None = CALL_TIMEOUT_S) -> Any:
        """The call's value; raises ``FunctionError`` if it raised, ``CallTimeout`` past ``timeout`` s (default
        ``CALL_TIMEOUT_S``, 60; None waits until done; 0 only looks: the result is returned if it is in)."""
        # a plain int or float >= 0 passes one test; anything else (None aside) gets the full checks
        if timeout is not None and (type(timeout) is not float and type(timeout) is not int or not timeout >= 0):
            _check_timeout(timeout)
            if not timeout >= 0:
                raise InvalidArgument(f"timeout={timeout!r} is invalid: pass seconds >= 0, or None to wait until "
                                      "done")
        return self._value(timeout)

    def _value(self, timeout: float | None) -> Any:
        """``result`` after its checks."""
        if self._result is _PENDING:
            self._client._poll_result(self, timeout)
        if self._result is _PENDING:
            raise self._client._unfinished(self.call_id, self.name, timeout)
        if type(self._result) is CallResult:
            self._result = _settled(self._result, self.call_id, self.name)  # kept: a second result() is the same
        if isinstance(self._result, CbctlError):
            raise self._result
        return self._result


def _settled(result: CallResult, call_id: str, name: str) -> Any:
    """A result as its caller sees it: the value, or the error (returned, not raised) it ended with."""
    try:
        return _outcome(result)
    except DecodeError as exc:
        return serialization.renamed(exc, f"the result of call {call_id} of {name!r}")


def _outcome(result: CallResult) -> Any:
    if result.ok:
        return serialization.decode(result.value)
    if result.error_type == "FunctionError":
        return FunctionError(result.message, result.remote_type, result.traceback)
    return error_from_wire(result.error_type, result.message)


class Client:
    """A connection to a running cluster; thread-safe. Use ``cbctl.connect()`` to make one."""

    def __init__(self, home: str | os.PathLike[str] | None = None, address: str | None = None,
                 keys: str | os.PathLike[str] | None = None, advertise: str | None = None) -> None:
        if home is not None and not isinstance(home, (str, os.PathLike)):
            raise InvalidArgument(f"home={home!r} is not a path: pass the cluster directory as a str or Path, or "
                                  "None for $CBCTL_HOME")
        self.home = cluster.resolve_home(home)
        if address is None:
            self.cluster = cluster.running_cluster(self.home)
            curve_keys = auth.cluster_keys(self.home, self.cluster.auth)
        else:  # a cluster on another machine, by its scheduler's address and a copy of its keys
            curve_keys = auth.load_keys_from(Path(keys) if keys is not None else auth.keys_dir(self.home))
            self.cluster = describe_cluster(address, curve_keys, Path(keys).parent if keys is not None else self.home)
        #: the cluster's largest serialised value (``cbctl up --max-message-mb``), checked before anything is sent
        self.max_message_bytes = self.cluster.max_message_bytes
        self.client_id = uuid.uuid4().hex[:12]
        # a TCP cluster's keys: every socket below authenticates with them (and the reply socket admits only
        # the cluster's processes), so nobody without them can call in or answer in the cluster's name
        self._context = auth.new_context(curve_keys)
        self._ids = itertools.count(1)
        scheduler = self._scheduler_address = random.choice(self.cluster.scheduler_addresses)
        self._call_sock = new_socket(self._context, zmq.DEALER)
        auth.connect(self._call_sock, scheduler)
        self._call_lock = threading.Lock()
        self._control_sock = new_socket(self._context, zmq.DEALER)
        self._control_watch = auth.watch_handshakes(self._control_sock, scheduler)
        auth.connect(self._control_sock, scheduler)
        self._control_lock = threading.Lock()
        self._responses = new_socket(self._context, zmq.PULL)
        if self.cluster.scheduler_addresses[0].startswith("tcp://"):
            # replies come from executors on any host: this client's address that they reach it at. On the head
            # that is the cluster's host; elsewhere the one given, else this machine's address on the route there
            advertise = advertise or os.environ.get("CBCTL_ADVERTISE") or None
            if advertise is None and self.cluster.is_local() and address is None:
                advertise = self.cluster.scheduler_addresses[0].rsplit(":", 1)[0]
            host = advertise or cluster.address_towards(scheduler)
            try:
                self.response_address = auth.bind_to_random_port(self._responses, host)
            except zmq.ZMQError as exc:
                self._context.destroy(linger=0)
                raise InvalidArgument(f"cannot open this client's reply socket on {host} ({exc}): advertise an "
                                      "address of this machine that the cluster can reach") from None
        else:
            self.response_address = cluster.ipc_address(self.home, f"client-{self.client_id}")
            try:
                self._responses.bind(self.response_address)
            except zmq.ZMQError as exc:
                self._context.destroy(linger=0)
                raise CbctlError(f"cannot open this client's reply socket {self.response_address} ({exc}): "
                                 f"the cluster directory {self.home} must be writable") from None
        self._receive_timeout_ms = -1  # the response socket's RCVTIMEO; set by the thread with the reader role
        self._store = connect_store(self._context, redis_url.resolve_address(self.home, self.cluster.store_address),
                                    writer_id=f"client-{self.client_id}")
        self._store_lock = threading.Lock()
        # this client's recent writes, carried by its calls so no executor cache serves it older versions
        self._session = ClientSession()
        # weak: a future its caller dropped (a timed-out ``call``) leaves no entry behind, while one still
        # held can be waited on again and gets a late result
        self._waiting: weakref.WeakValueDictionary[str, CallFuture] = weakref.WeakValueDictionary()
        # guards the tables, the reader role and ``_completed``; a plain lock (taken with ``with self._lock``
        # on the hot path: a Condition's own ``with`` is a Python-level call), never taken twice by one thread
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._reader_active = False
        self._sleepers = 0  # threads in ``_cond.wait``: nobody to notify when 0
        # the request of the ``call`` that holds the reader role on the fast path (it has no future in
        # ``_waiting``), so a resend after a scheduler restart includes it; b"" when none
        self._reader_frame: bytes | list[Any] = b""
        self._closed = False
        self._forked_from = 0  # set in a child of os.fork(): the parent's pid (see _after_fork_in_child)
        self._next_liveness_check = time.monotonic() + CLIENT_LIVENESS_CHECK_S
        # crash semantics (runtime/retries.py): ids of calls whose results came since the last request, which
        # the next one tells the scheduler about; and the scheduler's pid, to notice its restart
        self._completed: list[str] = []
        self._stored_waiting: weakref.WeakValueDictionary[str, CallFuture] = weakref.WeakValueDictionary()
        self._scheduler_pid = next((p.pid for p in self.cluster.processes if p.address == scheduler), 0)
        self._next_restart_check = 0.0
        # large arguments go to a cluster of this host through shared memory (runtime/wire/shared.py): segments
        # this client keeps, by call id, until the call's result comes (the scheduler may dispatch it again)
        self._shares = self.cluster.is_local() and shared.is_local_address(scheduler)
        self._segments: dict[str, list[str]] = {}
        _live_clients.add(self)

    # --- registration ----------------------------------------------------------------------------------

    def register(self, target: Callable[..., Any] | type, name: str | None = None, gpu: bool = False,
                 batching: bool = False, init_args: Sequence[Any] = ()) -> dict[str, Any]:
        """Register a function (or a class with a ``run(cb, ...)`` method, constructed once per executor
        with ``init_args``) under ``name`` (default: its ``__name__``); replaces an earlier one."""
        for flag, value in (("gpu", gpu), ("batching", batching)):
            _check_bool(value, flag)
        if isinstance(init_args, (str, bytes)) or not isinstance(init_args, (list, tuple)):
            raise InvalidArgument(f"init_args={init_args!r} is not a tuple: pass the constructor's arguments as a "
                                  "tuple, e.g. init_args=(10,)")
        if name is None:
            name = getattr(target, "__name__", None)
            if not isinstance(name, str) or name == "<lambda>":
                shown = "a lambda" if name == "<lambda>" else repr(target)
                raise InvalidArgument(f"{shown} has no name to register it under: pass name=...")
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise InvalidArgument(f"function name {name!r} is invalid: use a non-empty name not starting with '__'")
        problem = check_declaration(target, name, init_args)
        if problem:
            raise InvalidArgument(problem)
        options = {"gpu": gpu, "batching": batching, "is_class": isinstance(target, type),
                   "init_args": (self._encode(tuple(init_args), "the init_args of %r", name, out_of_band=False)
                                 if init_args else b""),
                   "source_file": source_file_of(target)}
        return self._register_prepared(PreparedFunction(name, cloudpickle.dumps(target), options))

    def _register_prepared(self, fn: PreparedFunction) -> dict[str, Any]:
        limits.check_size(len(fn.code), self.max_message_bytes,
                          f"the code of function {fn.name!r} (with what it captures)")
        limits.check_size(len(fn.options.get("init_args", b"")), self.max_message_bytes,
                          f"the init_args of {fn.name!r}")
        return self._control(lambda r: RegisterFunction(r, fn.name, fn.code, fn.options))

    def register_dag(self, name: str, functions: Sequence[Any], edges: Iterable[Sequence[Any]] | None = None,
                     **options: Any) -> dict[str, Any]:
        """Register a DAG of registered functions (names or the decorated functions themselves); with no
        ``edges`` it is a chain in the given order. ``multiexec=[f, ...]`` marks functions that run once per
        upstream result as each arrives (see ``cbctl.runtime.multiexec``)."""
        _check_name(name, "DAG name")
        if isinstance(functions, str):
            raise InvalidDag(f"DAG {name!r}: functions={functions!r} is one string: pass a list of names, "
                             f"e.g. [{functions!r}]")
        if not isinstance(functions, (list, tuple)):
            raise InvalidArgument(f"functions={functions!r} is not a list: pass the DAG's functions (or their names) "
                                  "as a list, e.g. register_dag('d', ['f', 'g'])")
        names = [function_name(f) for f in functions]
        if edges is not None and (isinstance(edges, (str, bytes)) or not isinstance(edges, (list, tuple))
                                  or not all(isinstance(e, (list, tuple)) and len(e) == 2 for e in edges)):
            raise InvalidArgument(f"edges={edges!r} is not a list of (upstream, downstream) pairs")
        edge_names = [[function_name(a), function_name(b)] for a, b in edges] if edges else []
        options = dag_options(options)
        return self._control(lambda r: RegisterDag(r, name, names, edge_names, options))

    def deploy(self, declared: Declarations | PreparedDeploy, path: str = "<declarations>"
               ) -> dict[str, list[dict[str, Any]]]:
        """Register what a deploy file declared (``declare.load_file``, or ``declare.prepare``'d): its functions,
        then its DAGs, then its triggers.

        Everything is checked here first (each declaration, each DAG against the file's functions and those
        already registered, names that clash, functions that cannot take ``cb``), so a file with a mistake
        registers nothing at all and the error names the problem."""
        prepared = declared if isinstance(declared, PreparedDeploy) else prepare(declared, path)
        listed = self.list()
        known = {f["name"] for f in listed["functions"]} | {f.name for f in prepared.functions}
        dag_names = {d["name"] for d in listed["dags"]} | {d.name for d in prepared.dags}
        for spec in prepared.dags:
            validate_dag(spec.name, spec.functions, spec.edges or chain_edges(spec.functions), known)
            if spec.name in known:
                raise InvalidArgument(f"DAG {spec.name!r} has the name of a function: give one of them another name")
        for fn in prepared.functions:
            if fn.name in dag_names:
                raise InvalidArgument(f"function {fn.name!r} has the name of a DAG: give one of them another name")
            limits.check_size(len(fn.code), self.max_message_bytes,
                              f"the code of function {fn.name!r} (with what it captures)")
        limits.check_size(sum(len(fn.code) + len(fn.options.get("init_args", b"")) for fn in prepared.functions),
                          self.max_message_bytes, f"the code of the {len(prepared.functions)} functions deployed "
                          "together (split the file)")
        # one request: the scheduler switches to all of them at once (a call never runs some new, some old)
        functions = [[fn.name, fn.code, fn.options] for fn in prepared.functions]
        dags = [[d.name, d.functions, d.edges, d.options] for d in prepared.dags]
        registered = self._control(lambda r: Deploy(r, functions, dags))
        if prepared.triggers:
            registered["triggers"] = [self.add_trigger(t.name, t.prefix, t.function, batch=t.batch, window=t.window,
                                                       join=t.join, values=t.values) for t in prepared.triggers]
        return registered

    def deploy_file(self, path: str | os.PathLike[str],
                    import_timeout: float | None = DEPLOY_IMPORT_TIMEOUT_S) -> dict[str, list[dict[str, Any]]]:
        """Import a deploy file, in an interpreter of its own, and register what it declares (see ``deploy``);
        ``DeployFileError`` naming the file if it does not import, declares something wrong (two functions of
        one name, a class without ``run``, ...), ends its interpreter (``os._exit``), or imports for longer than
        ``import_timeout`` seconds (None: no limit): nothing is registered then. ``InvalidArgument`` if it
        declares nothing."""
        prepared = import_deploy_file(path, import_timeout)
        if not prepared.functions and not prepared.dags and not prepared.triggers:
            raise InvalidArgument(f"{path} declares no functions or DAGs: decorate them with @cbctl.function")
        return self.deploy(prepared)

    def list(self) -> dict[str, Any]:
        """Registered functions (with where they are pinned) and DAGs."""
        return self._control(lambda r: ListRequest(r))

    def delete(self, name: str) -> dict[str, Any]:
        """Remove a function or DAG (a function still used by a DAG is refused)."""
        _check_name(name, "name")
        return self._control(lambda r: RemoveRequest(r, name))

    def add_trigger(self, name: str, prefix: str | None, function: Any, *, batch: int = 0, window: float = 0.0,
                    join: Sequence[str] = (), values: bool = False) -> dict[str, Any]:
        """Make every put to a key starting with ``prefix`` call ``function`` (a registered function or DAG,
        or its name) with ``(key, value)``, asynchronously and at least once: a call may run twice, so make it
        idempotent. Replaces an earlier trigger of the same ``name``. Deletes do not fire.

        With one of these, ``function`` is called with ``(keys)`` (``(keys, values)`` with ``values=True``),
        the distinct keys put since the trigger last fired, durable or ephemeral: ``batch=N`` once N keys under
        ``prefix`` arrived; ``window=T`` every T seconds with what arrived under ``prefix`` (no call when nothing
        did); ``join=[k1, ...]`` once every named key was put (no prefix needed: pass None)."""
        _check_name(name, "trigger name")
        if prefix is not None and not isinstance(prefix, str):
            raise InvalidArgument(f"prefix={prefix!r} is not a string: pass the key prefix whose puts fire the trigger")
        function = function_name(function)
        spec = TriggerSpec(name, prefix or "", function, batch, window, list(join), values)
        return self._control(lambda r: AddTrigger(r, spec.name, spec.prefix, spec.function, spec.batch,
                                                  float(spec.window), spec.join, spec.values))

    def list_triggers(self) -> list[dict[str, Any]]:
        """Every trigger: name, prefix, function, and since the store started, calls fired and failed."""
        return self._control(lambda r: ListTriggers(r))

    def remove_trigger(self, name: str) -> dict[str, Any]:
        """Stop trigger ``name`` (calls already fired still run); ``InvalidArgument`` if there is none."""
        _check_name(name, "trigger name")
        return self._control(lambda r: RemoveTrigger(r, name))

    def cluster_info(self) -> dict[str, Any]:
        return self._control(lambda r: ClusterInfoRequest(r))

    def supervisor_status(self) -> dict[str, Any]:
        return supervisor_request(self.cluster, "status", home=self.home)

    def scale(self, executors: int) -> dict[str, Any]:
        """Run ``executors`` CPU executors, as ``cbctl scale --executors N`` does; returns once done."""
        return scale_cluster(self.home, executors)

    def _control(self, build: Callable[[int], Message]) -> Any:
        self._check_open()
        with self._control_lock:
            req_id = next(self._ids)
            self._control_sock.send(build(req_id).pack())
            deadline = time.monotonic() + CONTROL_TIMEOUT_S
            while True:
                remaining = deadline - time.monotonic()
                try:
                    answered = remaining > 0 and auth.wait_for_reply(
                        self._control_sock, remaining, self._control_watch, self._scheduler_address, self.home)
                except AuthenticationError:
                    self._renew_control_socket()
                    raise
                if not answered:
                    self._renew_control_socket()  # a late reply must not be read as the answer to a later request
                    raise ClusterNotRunning(f"the scheduler did not answer within {CONTROL_TIMEOUT_S:.0f} s: "
                                            "check `cbctl status`")
                reply = unpack(self._control_sock.recv())
                if isinstance(reply, ControlResponse) and reply.req_id == req_id:
                    break
        if not reply.ok:
            raise error_from_wire(reply.error_type, reply.message)
        return reply.payload

    def _renew_control_socket(self) -> None:
        if self._control_watch is not None:
            self._control_watch.close()
        self._control_sock.close()
        self._control_sock = new_socket(self._context, zmq.DEALER)
        self._control_watch = auth.watch_handshakes(self._control_sock, self._scheduler_address)
        auth.connect(self._control_sock, self._scheduler_address)

    # --- calls -----------------------------------------------------------------------------------------

    def call(self, name: str, *args: Any, timeout: float | None = CALL_TIMEOUT_S, consistency: str = "lww",
             **source_args: Sequence[Any]) -> Any:
        """Call a function or DAG and return its result. ``args`` go to every source function;
        ``source_args`` (function name -> argument list) give a DAG's sources their own, instead of ``args``.
        ``timeout`` is in seconds (default ``CALL_TIMEOUT_S``, 60; None: as long as it takes); past it,
        ``CallTimeout``."""
        # a plain int or float > 0 passes one test; anything else (None aside) gets the full checks
        if timeout is not None and (type(timeout) is not float and type(timeout) is not int or not timeout > 0):
            _check_timeout(timeout)
            if not timeout > 0:
                # checked before sending: the call would run, with its side effects, while its caller gave up
                raise InvalidArgument(f"timeout={timeout!r} would give up before the call could finish: pass "
                                      "seconds > 0, None to wait until done, or use call_async to not wait")
        call_id, encoded_args, encoded_sources, refs = self._encode_call(name, args, consistency, False, source_args)
        # The fast path: a thread that finds no one reading takes the reader role and keeps it until its own
        # result is in, so its call needs no future, no table entry and no handoff; results for other threads'
        # calls that it reads go to their futures. Otherwise the call waits as a future does.
        future = None
        reading = False
        result: CallResult | CbctlError | None = None
        try:
            with self._lock:
                if self._reader_active:
                    future = self._waiting[call_id] = CallFuture(self, call_id, name)
                else:
                    self._reader_active = reading = True
                completed = self._completed
                if completed:
                    self._completed = []
            frame = self._request_frame(call_id, name, encoded_args, encoded_sources, False, consistency, refs,
                                        completed)
            if future is not None:
                future._request = frame
                self._send(frame)
            else:
                self._reader_frame = frame
                self._send(frame)
                started = time.monotonic()
                result = self._read(call_id, started, None if timeout is None else started + timeout, False)
        finally:
            if reading:
                with self._lock:
                    self._reader_frame = b""
                    self._reader_active = False
                    if type(result) is CallResult:
                        self._completed.append(call_id)
                    if self._sleepers:
                        self._cond.notify_all()  # a waiting thread takes the reader role over
        if future is not None:
            return future._value(timeout)
        if result is None:
            raise self._unfinished(call_id, name, timeout)
        if type(result) is CallResult:
            result = _settled(result, call_id, name)
        if isinstance(result, CbctlError):
            raise result
        return result

    def call_async(self, name: str, *args: Any, consistency: str = "lww", store_result: bool = False,
                   **source_args: Sequence[Any]) -> CallFuture:
        """Start a call and return its future at once. With ``store_result`` the result is written to the
        store under the call id and the future reads it from there (it outlives this client); once the future has
        read it, it is deleted from the store (a result never read stays)."""
        call_id, encoded_args, encoded_sources, refs = self._encode_call(name, args, consistency, store_result,
                                                                         source_args)
        future = CallFuture(self, call_id, name, stored=store_result)
        future.delete_stored_after_read = store_result
        with self._lock:
            (self._stored_waiting if store_result else self._waiting)[call_id] = future
            completed = self._completed
            if completed:
                self._completed = []
        frame = future._request = self._request_frame(call_id, name, encoded_args, encoded_sources, store_result,
                                                      consistency, refs, completed)
        self._send(frame)
        return future

    def _request_frame(self, call_id: str, name: str, encoded_args: bytes | Frames,
                       encoded_sources: dict[str, bytes | Frames], store_result: bool, consistency: str,
                       refs: list[str], completed: list[str]) -> bytes | list[Any]:
        """A call's packed ``CallRequest`` (what ``call`` and ``call_async`` send): with its large arguments in
        shared memory when the cluster is on this host, in segments this client releases (``_release``)."""
        frame = CallRequest(call_id, name, encoded_args, encoded_sources, self.response_address, store_result,
                            consistency, refs, self._session.extras(), completed).pack()
        if type(frame) is bytes or not self._shares or not shared.enabled():
            return frame
        made: list[str] = []
        frame = shared.export(frame, shared.KEEP, made)
        if made:
            self._segments[call_id] = made
        return frame

    def _release(self, call_id: str) -> None:
        """The call's result is in: its arguments' segments can go (``_request_frame``)."""
        names = self._segments.pop(call_id, None)
        if names:
            shared.release(names)

    def _encode_call(self, name: Any, args: tuple[Any, ...], consistency: Any, store_result: Any,
                     source_args: dict[str, Any]) -> tuple[str, bytes | Frames, dict[str, bytes | Frames], list[str]]:
        """A new call's checks, id and encoded arguments (what ``call`` and ``call_async`` share)."""
        if self._closed:
            self._check_open()  # before any lock: one held in the parent at fork time is never released here
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"{name!r} is not a function or DAG name: pass the name it was registered under")
        if consistency is not LWW or store_result is not False:  # the defaults need no check: the common call
            _check_call_options(consistency, store_result)
        call_id = f"{self.client_id}-{next(self._ids)}"
        encoded_sources = {}
        if source_args:
            for fn, values in source_args.items():
                if not isinstance(values, (list, tuple)):
                    values = [values]
                encoded_sources[fn] = self._encode(list(values), "the arguments of %r in the call of %r", fn, name)
        refs = serialization.find_refs(args)
        encoded_args = self._encode(list(args), "the arguments of the call of %r", name)
        if encoded_sources:
            size = len(encoded_args) + sum(len(v) for v in encoded_sources.values())
            limits.check_size(size, self.max_message_bytes, f"the arguments of the call of {name!r} together")
        return call_id, encoded_args, encoded_sources, refs

    def _send(self, frame: bytes | list[Any]) -> None:
        with self._call_lock:
            if self._closed:
                raise CbctlError("this client is closed: make a new one with cbctl.connect()")
            send_message(self._call_sock, frame)

    def _unfinished(self, call_id: str, name: str, timeout: float | None) -> CbctlError:
        """Why call ``call_id`` has no result after waiting ``timeout`` s."""
        if self._forked_from:
            self._check_open()  # raises: the client belongs to the process that forked this one
        if self._closed:
            return CbctlError(f"call {call_id} of {name!r} had not returned when its client was closed: wait for "
                              "results before closing the client")
        return CallTimeout(f"call {call_id} of {name!r} did not finish within {timeout:g} s (it may still be "
                           "running): wait longer with timeout=S (`cbctl call --timeout S`), or timeout=None to "
                           "wait until it is done")

    def _read(self, call_id: str, started: float, deadline: float | None,
              in_table: bool) -> CallResult | CbctlError | None:
        """The work of the thread that holds the reader role: read results until call ``call_id``'s is in, or
        the error that ended every waiting call, or None past ``deadline`` (after a last look at what has
        arrived) or once the client is closed; every other call's result goes to its future as it comes.
        ``in_table``: the call has a future in ``_waiting``, which gets its result too (``call``'s fast path
        has none). One frame per receive, without a drain poll: a frame already waiting returns from the
        blocking receive at once, and the role is kept until this call is done, so no handoff per frame."""
        sock = self._responses
        recv = sock.recv
        while not self._closed:
            now = time.monotonic()
            if now - started >= CLIENT_RESEND_CHECK_S:
                self._resend_if_scheduler_restarted()
            timeout_ms = _READ_SLICE_MS
            if deadline is not None and deadline - now < _READ_SLICE_S:
                timeout_ms = max(math.ceil((deadline - now) * 1000), 0)  # 0: read what is there, without waiting
            if timeout_ms != self._receive_timeout_ms:
                sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
                self._receive_timeout_ms = timeout_ms
            try:
                frame = recv()
            except zmq.Again:
                error = self._on_quiet(not in_table)
                if error is not None or timeout_ms == 0:
                    return error
                continue
            except zmq.ZMQError:
                if self._closed:
                    return None  # closed by another thread while this one waited
                raise
            if frame[:1] == MULTIPART_MARK:
                frame = receive_rest(sock, frame)
            try:
                result = unpack(frame)
            except CbctlError:
                continue
            if type(result) is CallResult:
                if result.extras:
                    self._session.record_result(result.extras)
                if self._segments:
                    self._release(result.call_id)
                if result.call_id == call_id:
                    if in_table:
                        self._hand_over(result)
                    return result
                self._hand_over(result)
        return None

    def _poll_result(self, future: CallFuture, timeout: float | None) -> None:
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        if self._closed:
            return  # its sockets are gone: the result cannot arrive any more
        if future._stored:
            self._poll_stored(future, deadline)
            return
        with self._lock:
            while future._result is _PENDING and not self._closed:
                if self._reader_active:  # another thread reads: it hands this result over when it comes
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._sleepers += 1
                    try:
                        self._cond.wait(remaining)
                    finally:
                        self._sleepers -= 1
                    continue
                # no one is reading: this caller reads (at least once, so done() sees what has arrived)
                self._reader_active = True
                self._lock.release()
                try:
                    self._read(future.call_id, started, deadline, True)
                finally:
                    self._lock.acquire()
                    self._reader_active = False
                    if self._sleepers:
                        self._cond.notify_all()  # a waiting thread takes the reader role over
                break

    def _hand_over(self, result: CallResult) -> None:
        """A result the reader read, to its future (one whose future was dropped is dropped too)."""
        with self._lock:
            future = self._waiting.pop(result.call_id, None)
            if future is not None:
                future._result = result
                future._request = b""  # its arguments need not be held any longer
                self._completed.append(result.call_id)
            if self._sleepers:
                self._cond.notify_all()

    def _on_quiet(self, reading_own: bool) -> CbctlError | None:
        """The reader's work when nothing arrived: has the scheduler refused this client, or has the cluster
        stopped (the latter checked every ``CLIENT_LIVENESS_CHECK_S``)? The error every waiting call ended with
        (``reading_own``: the reader's own fast-path call is waiting too), or None."""
        error = self._check_refused()  # only when no result came: never on the way of one
        if error is None and (reading_own or self._waiting) and time.monotonic() >= self._next_liveness_check:
            error = self._fail_calls_if_cluster_stopped()
        return error

    def _resend_if_scheduler_restarted(self) -> None:
        """Work of a caller that has waited long: a restarted scheduler lost the calls it had not dispatched
        yet, so every call still waiting is sent again (under its id: a scheduler ignores the ones it has).
        The supervisor rewrites the cluster file with the new pid when it restarts the scheduler."""
        now = time.monotonic()
        if now < self._next_restart_check:
            return
        self._next_restart_check = now + CLIENT_RESEND_CHECK_S
        found = cluster.ClusterFile.read(self.home) if self.cluster.is_local() else None
        pid = next((p.pid for p in found.processes if p.address == self._scheduler_address), 0) if found else 0
        if not pid or pid == self._scheduler_pid:
            return
        self._scheduler_pid = pid
        with self._lock:
            waiting = [*self._waiting.values(), *self._stored_waiting.values()]
            frames = [f._request for f in waiting if f._request]
            if self._reader_frame:  # the fast path's call (``call``): it has no future
                frames.append(self._reader_frame)
        with self._call_lock:
            if self._closed:
                return
            for frame in frames:
                send_message(self._call_sock, frame)

    def _check_refused(self) -> CbctlError | None:
        """Fail every waiting call if the scheduler refused this client's frames: it answers the call socket
        only with a version refusal (results come to the response socket), and those calls would otherwise
        wait for their timeouts. Returns the refusal (for the reader's own call), or None."""
        with self._call_lock:
            if self._closed or not self._call_sock.poll(0):
                return None
            frame = self._call_sock.recv()
        try:
            unpack(frame)
            return None
        except ProtocolError as exc:
            refused = exc
        self._fail_waiting(refused)
        return refused

    def _fail_calls_if_cluster_stopped(self) -> CbctlError | None:
        """While calls wait and nothing arrives: once the cluster has stopped (``cbctl down`` finished: the
        supervisor and this client's scheduler are gone), nothing can answer them any more, so each fails now
        with ``ClusterNotRunning`` instead of waiting for its timeout, or for ever. (``cbctl down`` stops the
        executors first, and they send the results of what they ran before they exit: a call that could finish
        has finished by then.) A killed supervisor alone stops nothing: its children serve on, so calls wait.
        Returns the error (for the reader's own call), or None while the cluster runs."""
        self._next_liveness_check = time.monotonic() + CLIENT_LIVENESS_CHECK_S
        if not self.cluster.is_local():
            return None  # another machine's pids: its calls wait for their timeouts
        if self.cluster.supervisor_alive() or (self._scheduler_pid and process_alive(self._scheduler_pid)):
            return None
        error = ClusterNotRunning(f"the cluster in {self.home} stopped before this call returned: it did not run, "
                                  "or ran without a result reaching this client; start the cluster and call again")
        self._fail_waiting(error)
        return error

    def _fail_waiting(self, error: CbctlError) -> None:
        """Every call still waiting for a reply ends with ``error`` (nothing can answer it any more)."""
        with self._lock:
            for future in list(self._waiting.values()):
                future._result = error
            self._waiting.clear()

    def _poll_stored(self, future: CallFuture, deadline: float | None) -> None:
        delay = 0.001
        key = registry.result_key(future.call_id)
        started = time.monotonic()
        while True:
            with self._store_lock:
                (lattice,) = self._store.get_lattices([key])
            if lattice is not None and not getattr(lattice, "tombstone", False):
                try:
                    future._result = result = CallResult(**serialization.decode(lattice.value))
                except (DecodeError, TypeError) as exc:
                    future._result = result = CallResult(future.call_id, False, b"", "DecodeError", (
                        f"the stored result of call {future.call_id} cannot be read ({exc}): call again"))
                future._request = b""
                if self._segments:
                    self._release(future.call_id)
                if future.delete_stored_after_read:
                    try:
                        with self._store_lock:
                            self._store.delete(key)
                    except CbctlError:
                        pass  # only housekeeping: the result is in hand
                with self._lock:
                    self._stored_waiting.pop(future.call_id, None)
                    self._completed.append(future.call_id)
                if result.extras:
                    self._session.record_result(result.extras)
                return
            if deadline is not None and time.monotonic() + delay > deadline:
                return
            if time.monotonic() - started >= CLIENT_RESEND_CHECK_S:
                self._resend_if_scheduler_restarted()
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    # --- state -----------------------------------------------------------------------------------------

    def get(self, key: str, default: Any = _PENDING) -> Any:
        """The value under ``key``; ``default`` if given and there is none, else ``NoSuchKey``. A key written by
        ``causal`` calls holds a set of concurrent values: its value is their list (as ``cb.get`` returns it in a
        causal call). ``DecodeError`` if the value cannot be decoded in this process (see its message)."""
        limits.check_key(key)
        self._check_open()
        with self._store_lock:
            (lattice,) = self._store.get_lattices([key])
        if default is not _PENDING and (lattice is None or getattr(lattice, "tombstone", False)):
            return default
        return reveal(key, lattice, LWW, owned=True)  # nothing else holds the frames received

    def put(self, key: str, value: Any, durable: bool = True, ttl: float | None = None) -> bool:
        """Write ``value`` under ``key`` (last-writer-wins); durable per the store's policy on return. Returns
        whether the value is now the key's: False when a write stamped later won the merge even after this one
        was stamped past the version it found (a concurrent writer; see ``writer_clock.py``).

        ``durable=False``: an ephemeral value (as ``cb.put(..., durable=False)`` in a function): in the store's
        memory only, never logged, for ``ttl`` seconds (default 300); lost if the store restarts."""
        limits.check_key(key)
        self._check_open()
        # a large value travels and is kept as frames of its own where the store can (see the README's "Large values")
        encoded = self._encode(value, "the value for key %r", key, out_of_band=self._store.keeps_frames)
        if not durable:
            ttl_s = limits.check_ttl(ttl, default_as=0.0)
            with self._store_lock:
                self._store.put_ephemeral(key, self._store.new_lww(encoded, key), ttl_s)
            return True
        if ttl is not None:
            raise InvalidArgument("ttl applies to ephemeral values only: pass durable=False with it")
        with self._store_lock:
            try:
                written, won = self._store.put_lww(key, self._store.new_lww(encoded, key))
            except InvalidArgument as exc:
                if "ephemeral value" in str(exc):  # the store says why itself (a key is durable or ephemeral)
                    raise
                raise InvalidArgument(f"could not write {key!r}: {exc} (it holds values written by causal calls; "
                                      "use another key, or delete it first with delete_key)") from None
        self._session.record({key: written.timestamp})  # its read-your-writes token
        return won

    def delete_key(self, key: str) -> bool:
        """Delete ``key`` (deleting a key that holds nothing is not an error); whether the delete won, as for
        ``put``."""
        limits.check_key(key)
        self._check_open()
        deleted_after = time.time_ns()
        with self._store_lock:
            won = self._store.delete(key)
        self._session.record({key: deleted_after})
        return won

    def list_keys(self, prefix: str = "") -> list[str]:
        """The keys that hold a value and start with ``prefix``, sorted (cbctl's own ``__cb/`` keys left out)."""
        if not isinstance(prefix, str):
            raise InvalidArgument(f"prefix={prefix!r} is not a string: pass a key prefix, or '' for every key")
        self._check_open()
        with self._store_lock:
            return [k for k in self._store.list_keys(prefix) if not k.startswith("__cb/")]

    def store_stats(self) -> dict[str, Any]:
        self._check_open()
        with self._store_lock:
            return self._store.stats()

    def _encode(self, value: Any, what: str, *what_args: Any, out_of_band: bool = True) -> bytes | Frames:
        """``serialization.encode``, with an error that says which value could not be serialised or is over the
        cluster's size limit (``what`` is %-formatted with ``what_args`` only then: this runs on every call)."""
        try:
            encoded = serialization.encode(value, out_of_band)
        except Exception as exc:
            raise InvalidArgument(f"{what % what_args} cannot be serialised ({type(exc).__name__}: {exc}): "
                                  "pass plain data, numpy arrays or picklable objects") from None
        if len(encoded) > self.max_message_bytes:
            raise limits.too_large(len(encoded), self.max_message_bytes, what % what_args)
        return encoded

    # --- lifetime --------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._forked_from:
            raise CbctlError(f"this client was made in process {self._forked_from}, and a client cannot be used after "
                             "os.fork() (its sockets belong to the parent): call cbctl.connect() in the child")
        if self._closed:
            raise CbctlError("this client is closed: make a new one with cbctl.connect()")

    def close(self) -> None:
        if self._forked_from:
            return  # the sockets are the parent's: the child must not touch them, nor wait on the parent's locks
        with self._call_lock:
            if self._closed:
                return
            self._closed = True
        self._call_sock.close()
        if self._control_watch is not None:
            self._control_watch.close()
        self._control_sock.close()
        self._responses.close()
        self._store.close()
        self._context.term()
        for call_id in list(self._segments):  # calls that never returned: nothing will read their arguments now
            self._release(call_id)
        if self.response_address.startswith("ipc://"):
            Path(self.response_address[len("ipc://"):]).unlink(missing_ok=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Every client not yet garbage-collected, so a fork can mark them unusable in the child (see below).
_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """zmq sockets and contexts do not survive ``fork()``: a child that used its parent's client would spin or
    hang (and the locks another parent thread held at the fork are never released here). Every client
    inherited is marked, so its next use raises at once, saying what to do; the parent's copy is unaffected."""
    parent = os.getppid()
    for client in list(_live_clients):
        client._forked_from = parent
        client._closed = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{what} {name!r} is invalid: pass a non-empty string")


def _check_bool(value: Any, what: str) -> None:
    if type(value) is not bool:
        raise InvalidArgument(f"{what}={value!r} is not True or False")


def _check_timeout(timeout: Any) -> None:
    """A timeout is None or seconds (a real number, numpy's included, but not a bool, a string or NaN); its range
    is the caller's to check."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
                                or math.isnan(timeout)):
        raise InvalidArgument(f"timeout={timeout!r} is not a number of seconds: pass an int or a float, or None to "
                              "wait until done")


def _check_call_options(consistency: Any, store_result: Any) -> None:
    if consistency not in CONSISTENCY_MODES:
        raise InvalidArgument(f"consistency {consistency!r} is not one of {', '.join(CONSISTENCY_MODES)}: pass one "
                              "of these modes")
    _check_bool(store_result, "store_result")




def connect(home: str | os.PathLike[str] | None = None, address: str | None = None,
            keys: str | os.PathLike[str] | None = None, advertise: str | None = None) -> Client:
    """Connect to the cluster in ``home`` (default ``$CBCTL_HOME``, else ``~/.cbctl``), or, from another
    machine, to the one whose scheduler listens at ``address`` (``tcp://HEAD:PORT``) with a copy of its keys
    directory ``keys`` (default ``HOME/keys``). Results come back to a socket of this client at ``advertise``
    (``tcp://ADDR``; default ``$CBCTL_ADVERTISE``, else this machine's address on the route to the cluster)."""
    return Client(home, address=address, keys=keys, advertise=advertise)


def describe_cluster(address: str, keys: auth.CurveKeys, keys_home: Path) -> cluster.ClusterFile:
    """The cluster file of the cluster whose scheduler listens at ``address``, asked of that scheduler."""
    if not address.startswith("tcp://"):
        raise InvalidArgument(f"address {address!r} must look like tcp://HEAD:PORT (the head's scheduler)")
    context = auth.new_context(keys)
    sock = new_socket(context, zmq.DEALER)
    watch = auth.watch_handshakes(sock, address)
    try:
        auth.connect(sock, address)
        sock.send(DescribeCluster(1).pack())
        if not auth.wait_for_reply(sock, CONTROL_TIMEOUT_S, watch, address, keys_home):
            raise ClusterNotRunning(f"no cluster answered at {address} within {CONTROL_TIMEOUT_S:.0f} s: is it up "
                                    "(`cbctl up --listen`), and can this machine reach it?")
        reply = unpack(sock.recv())
    finally:
        if watch is not None:
            watch.close()
        sock.close()
        context.destroy(linger=0)
    if not isinstance(reply, ControlResponse):
        raise ProtocolError(f"unexpected reply {type(reply).__name__} from {address}")
    if not reply.ok:
        raise error_from_wire(reply.error_type, reply.message)
    raw = dict(reply.payload)
    raw["processes"] = [cluster.ProcessEntry(**p) for p in raw.get("processes", [])]
    return cluster.ClusterFile(**raw)
