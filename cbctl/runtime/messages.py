"""Every message that crosses a process boundary, one small typed class per kind.

A message is one zmq frame: the msgpack array ``[PROTOCOL_VERSION, KIND, *fields]``, with the fields in
declaration order. User values inside messages are already-encoded bytes (see ``serialization``), so
unpacking a frame never runs user code. ``unpack`` is the only place a frame is trusted: anything that is
not a well-formed message of this version, with every field of its declared type, raises ``ProtocolError``,
which servers log, count and drop.

Kind 0 is reserved, for ever, for one frame whose layout never changes: ``[sender_version, 0, text]``, a
server's answer to a frame of another protocol version (``version_refusal``), so the peer is told in a form any
version reads, and ``unpack`` turns it into a ``ProtocolError`` carrying the text.
"""

from __future__ import annotations

import operator
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import msgpack

from cbctl.errors import ProtocolError
from cbctl.runtime.defaults import PROTOCOL_VERSION

_KINDS: dict[int, type[Message]] = {}

#: The reserved kind of a version refusal (see the module docstring); no message class may use it.
VERSION_REFUSAL_KIND = 0


class Message:
    """Base of all messages: ``pack`` to a frame, ``unpack`` (module function) back."""

    __slots__ = ()
    KIND: ClassVar[int]
    _FIELDS: ClassVar[tuple[str, ...]]
    _VALUES: ClassVar[Callable[[Message], tuple[Any, ...]]]  # the fields' values in order, in one C call
    _CHECK: ClassVar[Callable[[list[Any]], int]]  # position of a decoded frame's first ill-typed field, or 0

    def pack(self) -> bytes:
        return msgpack.packb([PROTOCOL_VERSION, self.KIND, *self._VALUES(self)])


def message(kind: int):
    """Class decorator: a slotted dataclass registered under ``kind``."""

    def register(cls: type) -> type:
        cls = dataclass(slots=True)(cls)
        if kind in _KINDS or kind == VERSION_REFUSAL_KIND:
            raise RuntimeError(f"message kind {kind} registered twice")
        cls.KIND = kind
        cls._FIELDS = tuple(f.name for f in fields(cls))
        # attrgetter of several names returns a tuple, of one name the bare value: keep it a tuple
        getter = operator.attrgetter(*cls._FIELDS) if cls._FIELDS else (lambda _m: ())
        cls._VALUES = staticmethod(getter if len(cls._FIELDS) != 1 else (lambda m, _get=getter: (_get(m),)))
        cls._CHECK = staticmethod(_compile_checks(cls))
        _KINDS[kind] = cls
        return cls

    return register


def unpack(frame: bytes) -> Message:
    """Parse one frame; raise ``ProtocolError`` for anything that is not a message of this version, and for a
    peer's version refusal (with its text)."""
    try:
        data = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"frame of {len(frame)} bytes is not msgpack: {exc}") from None
    if not isinstance(data, list) or len(data) < 2:
        raise ProtocolError("frame is not a [version, kind, ...] array")
    if data[1] == VERSION_REFUSAL_KIND and type(data[1]) is int:  # before the version: any version's refusal
        text = data[2] if len(data) > 2 and isinstance(data[2], str) else "no reason given"
        raise ProtocolError(f"the cluster refused this request: {text}")
    if data[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {data[0]!r} is not {PROTOCOL_VERSION}: upgrade both sides")
    cls = _KINDS.get(data[1]) if isinstance(data[1], int) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {data[1]!r}")
    try:
        message = cls(*data[2:])
    except TypeError:
        raise ProtocolError(
            f"{cls.__name__} frame has {len(data) - 2} fields, expected {len(cls._FIELDS)}"
        ) from None
    # Field types are checked here, once, so no handler meets a well-formed frame whose fields are of the
    # wrong type (a str where a dict belongs would otherwise fail deep inside a handler, or later, in timer
    # code that reads what the handler stored). Fields left at their defaults need no check.
    bad = cls._CHECK(data)
    if bad:
        name = cls._FIELDS[bad - 2]
        annotation = typing.get_type_hints(cls)[name]
        annotation = annotation.__name__ if type(annotation) is type else str(annotation).replace("typing.", "")
        raise ProtocolError(f"{cls.__name__}.{name} is a {type(data[bad]).__name__}, not {annotation}: "
                            "the sender is not speaking this protocol")
    return message


def _compile_checks(cls: type) -> Callable[[list[Any]], int]:
    """One function per kind that checks a decoded frame's fields against the annotations, as msgpack decodes
    them, and returns the position of the first ill-typed one (0: all fine). Generated as source, as dataclasses
    generates ``__init__``, because this runs for every frame on the call path: one function with the checks
    inlined costs about a microsecond less per frame than a loop over per-field predicates.

    Exact types (``type(v) is int``), so a bool is not an int; a float field takes ints too (``1`` is as good as
    ``1.0``). Containers are checked element by element (a trigger's schedule is a few entries, and handlers
    index into it). Fields left at their defaults (absent from the frame) need no check."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    required = sum(1 for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)
    lines = ["def check(d):", "    n = len(d)"]
    for i, name in enumerate(names):
        test = _type_test(hints[name], f"d[{i + 2}]")
        if test is None:
            continue
        guard = "" if i < required else f"n > {i + 2} and "
        lines.append(f"    if {guard}not ({test}): return {i + 2}")
    lines.append("    return 0")
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), {"_all_str": _all_str, "_all_int": _all_int}, namespace)  # noqa: S102 - our own source
    return namespace["check"]


def _all_str(values: Any) -> bool:
    for v in values:  # noqa: SIM110 - a loop is about twice as fast as all() over a generator here
        if type(v) is not str:
            return False
    return True


def _all_int(values: Any) -> bool:
    for v in values:  # noqa: SIM110 - as in _all_str
        if type(v) is not int:
            return False
    return True


def _type_test(annotation: Any, expr: str) -> str | None:
    """A Python expression that is true when ``expr`` holds a value of ``annotation`` (None for ``Any``)."""
    if annotation is Any:
        return None
    if annotation is float:
        return f"type({expr}) is float or type({expr}) is int"
    if annotation in (int, str, bytes, bool):
        return f"type({expr}) is {annotation.__name__}"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        test = _type_test(inner, expr)
        return None if test is None else f"{expr} is None or ({test})"
    if origin is list:
        if args[0] is Any:
            return f"type({expr}) is list"
        if args[0] in (str, int):
            return f"type({expr}) is list and _all_{args[0].__name__}({expr})"
        item = _type_test(args[0], "x")
        return f"type({expr}) is list and all({item} for x in {expr})"
    if origin is dict and args[0] is str:
        keys = f"type({expr}) is dict and _all_str({expr})"
        if args[1] is Any:
            return keys
        if args[1] in (str, int):
            return f"{keys} and _all_{args[1].__name__}({expr}.values())"
        value = _type_test(args[1], "x")
        return f"{keys} and all({value} for x in {expr}.values())"
    raise TypeError(f"messages cannot carry fields of type {annotation!r}: use msgpack types, str-keyed dicts")


def version_refusal(frame: bytes, server: str) -> bytes | None:
    """The frame ``server`` (e.g. "the scheduler") answers ``frame`` with when ``frame`` is a message of another
    protocol version, else None (nothing to answer: not a message, this version, or itself a refusal, which
    must never be answered or two servers could refuse each other for ever). Called only after ``unpack``
    failed, so the second parse costs nothing on the way of a good frame."""
    try:
        data = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:
        return None
    if not isinstance(data, list) or len(data) < 2:
        return None
    if data[0] == PROTOCOL_VERSION or data[1] == VERSION_REFUSAL_KIND:
        return None
    from cbctl import __version__  # late: the package imports this module

    theirs = repr(data[0])
    theirs = theirs if len(theirs) <= 20 else theirs[:17] + "..."
    text = (f"{server} speaks cbctl protocol version {PROTOCOL_VERSION} (cbctl {__version__}), not {theirs}: "
            "run the same cbctl version in the cluster and its clients (after an upgrade, restart the cluster "
            "with `cbctl down` and `cbctl up`)")
    return msgpack.packb([PROTOCOL_VERSION, VERSION_REFUSAL_KIND, text])


def all_kinds() -> dict[int, type[Message]]:
    """The registry of message classes by kind (for tests and diagnostics)."""
    return dict(_KINDS)


# --- store -----------------------------------------------------------------------------------------


@message(10)
class GetRequest(Message):
    """Read several keys at once; the reply carries one lattice (wire form) or None per key."""

    req_id: int
    keys: list[str]


@message(11)
class GetResponse(Message):
    req_id: int
    lattices: list[Any]


@message(12)
class PutRequest(Message):
    """Merge ``lattice`` (wire form) into ``key``; acknowledged once it is in the write-ahead log."""

    req_id: int
    key: str
    lattice: list[Any]


@message(13)
class DeleteRequest(Message):
    """Write a tombstone for ``key`` that wins or loses by last-writer-wins order."""

    req_id: int
    key: str
    timestamp: int
    writer: str


@message(14)
class ListKeysRequest(Message):
    req_id: int
    prefix: str


@message(15)
class ListKeysResponse(Message):
    req_id: int
    keys: list[str]


@message(16)
class Ack(Message):
    """A write (put, delete, subscribe) is durable per the store's policy and applied. ``superseded_by``: for a
    last-writer-wins write that did not win the merge, the timestamp of the version that did (0: it won)."""

    req_id: int
    superseded_by: int = 0


@message(17)
class ErrorResponse(Message):
    """A request failed; ``error_type`` names a ``CbctlError`` subclass."""

    req_id: int
    error_type: str
    message: str


@message(18)
class StoreStatsRequest(Message):
    req_id: int


@message(19)
class StoreStatsResponse(Message):
    req_id: int
    stats: dict[str, Any]


@message(20)
class SubscribeRequest(Message):
    """An executor cache holds ``keys`` and wants every merge of them pushed to ``address``."""

    req_id: int
    subscriber: str
    address: str
    keys: list[str]
    unsubscribe: bool = False


@message(21)
class KeyUpdate(Message):
    """Pushed by the store to subscribers: the merged lattice of a key after a write."""

    key: str
    lattice: list[Any]


# --- control: clients and the supervisor talking to a scheduler --------------------------------------


@message(30)
class RegisterFunction(Message):
    """``code`` is the cloudpickled function or class; ``options``: gpu, batching, is_class, init_args."""

    req_id: int
    name: str
    code: bytes
    options: dict[str, Any]


@message(31)
class RegisterDag(Message):
    req_id: int
    name: str
    functions: list[str]
    edges: list[list[str]]
    options: dict[str, Any] = field(default_factory=dict)


@message(32)
class ListRequest(Message):
    req_id: int


@message(33)
class RemoveRequest(Message):
    req_id: int
    name: str


@message(34)
class ClusterInfoRequest(Message):
    """Ask a scheduler for what it knows: executors, statuses, policy state, metrics."""

    req_id: int


@message(35)
class ControlResponse(Message):
    """Reply to any control request: ``payload`` on success, else ``error_type`` and ``message``."""

    req_id: int
    ok: bool
    payload: Any = None
    error_type: str = ""
    message: str = ""


# --- calls: the hot path ------------------------------------------------------------------------------


@message(40)
class CallRequest(Message):
    """Client -> scheduler: call a function or a DAG.

    ``args`` is the encoded positional argument list given to every source; ``source_args`` overrides
    it per source function. ``refs`` lists store keys referenced by ``Ref`` arguments (for locality).
    """

    call_id: str
    name: str
    args: bytes
    source_args: dict[str, bytes]
    response_address: str
    store_result: bool
    consistency: str
    refs: list[str]
    extras: dict[str, Any] = field(default_factory=dict)  # the client's session (see runtime/consistency.py)
    # ids of this client's calls whose results came in since its previous request: the scheduler forgets
    # them (see runtime/retries.py); riding here costs no message of its own
    completed: list[str] = field(default_factory=list)


@message(41)
class DagTrigger(Message):
    """One edge of a DAG call, carrying the schedule so no separate schedule message is needed.

    ``locations`` maps each function of the call to the executor address chosen for it, ``versions``
    to its registered version (an executor reloads code whose version it does not hold), ``edges`` is
    the DAG's edge list. ``source`` is the upstream function ('' for the caller); ``payload`` is the
    encoded upstream result (or argument list for a source). ``extras`` carries per-call options that
    only some calls need (consistency metadata, continuation depth).
    """

    call_id: str
    dag: str
    function: str
    locations: dict[str, str]
    versions: dict[str, int]
    edges: list[list[str]]
    source: str
    payload: bytes
    response_address: str
    store_result: bool
    consistency: str
    extras: dict[str, Any]


@message(42)
class CallResult(Message):
    """Sink executor (or scheduler, on a failed dispatch) -> caller's response address."""

    call_id: str
    ok: bool
    value: bytes
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    executor_id: str = ""
    remote_type: str = ""  # the user exception's class name, for FunctionError
    extras: dict[str, Any] = field(default_factory=dict)  # the call's writes, for the client's session


# --- executors and schedulers -------------------------------------------------------------------------


@message(50)
class ExecutorStatus(Message):
    """Every executor -> every scheduler, about once a second, and once at start and on leaving."""

    executor_id: str
    address: str
    executor_type: str
    running: bool
    pinned: list[str]
    utilization: float
    queue_length: int
    cached_keys: list[str]
    pid: int
    metrics: dict[str, Any]


@message(51)
class StatusAck(Message):
    executor_id: str


@message(52)
class PinRequest(Message):
    """Scheduler -> executor: load ``function`` and keep it ready (classes are constructed now)."""

    function: str
    version: int
    scheduler_address: str


@message(53)
class PinResponse(Message):
    executor_id: str
    function: str
    accepted: bool
    reason: str = ""


@message(54)
class UnpinRequest(Message):
    function: str


@message(55)
class DirectMessage(Message):
    """``cb.send(executor_id, message)``: one running function to another executor's ``cb.recv()``."""

    sender: str
    body: bytes


@message(57)
class CallAborted(Message):
    """A step of a DAG call failed and the caller has its error: executors that may hold the call's partial
    joins (upstream results waiting for a failed branch that will never come) drop them now, not at expiry."""

    call_id: str


# --- supervisor ----------------------------------------------------------------------------------------


@message(60)
class ProcessReady(Message):
    """A child -> the supervisor, once it is serving (or ``error`` if it could not start)."""

    role: str
    index: int
    pid: int
    address: str
    error: str = ""


@message(61)
class SupervisorRequest(Message):
    """CLI -> supervisor: ``command`` is status, stop or scale; ``arguments`` depends on it, and may hold
    ``START_BY``: unix seconds after which the supervisor ignores the request instead of carrying it out (its
    sender gave up waiting: a supervisor resumed after SIGSTOP must not act on a `cbctl down` nobody awaits)."""

    req_id: int
    command: str
    arguments: dict[str, Any] = field(default_factory=dict)


#: ``SupervisorRequest.arguments`` key: see the class.
START_BY = "start_by"


# --- executor departure (kinds 70-79; see runtime/departure.py) ---------------------------------------------


@message(70)
class ExecutorLeaving(Message):
    """A departing executor -> every other executor: send nothing more to ``address``; send what was meant
    for it to ``heir_address`` ('' when it has no heir) and acknowledge with ``LeavingAck``."""

    executor_id: str
    address: str
    heir_address: str


@message(71)
class LeavingAck(Message):
    """A scheduler or executor -> a departing executor, on the socket that carried its earlier triggers
    there, so every one of them arrived before this: ``sender`` (its own address) will send nothing more."""

    sender: str


# --- consistency: repeatable-read snapshots between executors (kinds 90-99; see runtime/consistency.py) ---


@message(90)
class VersionRequest(Message):
    """Executor -> the executor that first read ``key`` in repeatable-read call ``call_id``: send the version
    you keep for it to ``reply_to``."""

    req_id: int
    call_id: str
    key: str
    reply_to: str


@message(91)
class VersionResponse(Message):
    """``found`` is False when no snapshot is kept (released, expired, or lost with a restart); ``lattice``
    (wire form) is None with ``found`` when the call's version is "no value"."""

    req_id: int
    found: bool
    lattice: list[Any] | None


@message(92)
class SnapshotRelease(Message):
    """The step that answered a repeatable-read call -> each executor holding snapshots for it: these calls
    ended, drop their snapshots."""

    call_ids: list[str]


# --- execution features: continuations and storage triggers (kinds 100-109) --------------------------------


@message(100)
class ContinueCall(Message):
    """Executor -> scheduler: a sink returned ``cbctl.Continue(name, *args)``; call ``name`` with ``args``
    under the same call id and response address, so the original caller receives the chain's final result.
    ``depth`` is how many hand-offs this call has made, including this one (bounded per call)."""

    call_id: str
    name: str
    args: bytes
    response_address: str
    store_result: bool
    consistency: str
    depth: int
    extras: dict[str, Any] = field(default_factory=dict)  # the call's extras, for its client session


@message(101)
class AddTrigger(Message):
    """Client -> scheduler: every put to a key starting with ``prefix`` calls ``function`` with (key, value)."""

    req_id: int
    name: str
    prefix: str
    function: str


@message(102)
class ListTriggers(Message):
    req_id: int


@message(103)
class RemoveTrigger(Message):
    req_id: int
    name: str


# --- crash semantics (kinds 110-119; see runtime/retries.py) -------------------------------------------------


@message(110)
class ExecutorLost(Message):
    """The supervisor -> every scheduler, as soon as it sees an executor process die: stop placing work at
    ``address`` until a status of its restarted process comes, and re-dispatch the calls that used it."""

    executor_id: str
    address: str
    pid: int
    reason: str


@message(111)
class CallRetried(Message):
    """A scheduler -> the surviving executors of a call it dispatches again as ``attempt``: drop what an older
    attempt left waiting for its other triggers (the new attempt may place its joins elsewhere), and the older
    attempt's triggers still on their way."""

    call_id: str
    attempt: int
