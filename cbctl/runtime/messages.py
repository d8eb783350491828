"""Every message that crosses a process boundary, one small typed class per kind.

A message is one zmq frame: the msgpack array ``[PROTOCOL_VERSION, KIND, *fields]``, with the fields in
declaration order. User values inside messages are already-encoded bytes (see ``serialization``), so
unpacking a frame never runs user code. ``unpack`` is the only place a frame is trusted: anything that is
not a well-formed message of this version raises ``ProtocolError``, which servers log, count and drop.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack

from cbctl.errors import ProtocolError
from cbctl.runtime.defaults import PROTOCOL_VERSION

_KINDS: dict[int, type[Message]] = {}


class Message:
    """Base of all messages: ``pack`` to a frame, ``unpack`` (module function) back."""

    __slots__ = ()
    KIND: ClassVar[int]
    _FIELDS: ClassVar[tuple[str, ...]]
    _VALUES: ClassVar[Callable[[Message], tuple[Any, ...]]]  # the fields' values in order, in one C call

    def pack(self) -> bytes:
        return msgpack.packb([PROTOCOL_VERSION, self.KIND, *self._VALUES(self)])


def message(kind: int):
    """Class decorator: a slotted dataclass registered under ``kind``."""

    def register(cls: type) -> type:
        cls = dataclass(slots=True)(cls)
        if kind in _KINDS:
            raise RuntimeError(f"message kind {kind} registered twice")
        cls.KIND = kind
        cls._FIELDS = tuple(f.name for f in fields(cls))
        # attrgetter of several names returns a tuple, of one name the bare value: keep it a tuple
        getter = operator.attrgetter(*cls._FIELDS) if cls._FIELDS else (lambda _m: ())
        cls._VALUES = staticmethod(getter if len(cls._FIELDS) != 1 else (lambda m, _get=getter: (_get(m),)))
        _KINDS[kind] = cls
        return cls

    return register


def unpack(frame: bytes) -> Message:
    """Parse one frame; raise ``ProtocolError`` for anything that is not a message of this version."""
    try:
        data = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"frame of {len(frame)} bytes is not msgpack: {exc}") from None
    if not isinstance(data, list) or len(data) < 2:
        raise ProtocolError("frame is not a [version, kind, ...] array")
    if data[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {data[0]!r} is not {PROTOCOL_VERSION}: upgrade both sides")
    cls = _KINDS.get(data[1]) if isinstance(data[1], int) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {data[1]!r}")
    try:
        return cls(*data[2:])
    except TypeError:
        raise ProtocolError(
            f"{cls.__name__} frame has {len(data) - 2} fields, expected {len(cls._FIELDS)}"
        ) from None


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
    """A write (put, delete, subscribe) is durable per the store's policy and applied."""

    req_id: int


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
    """CLI -> supervisor: ``command`` is status, stop or scale; ``arguments`` depends on it."""

    req_id: int
    command: str
    arguments: dict[str, Any] = field(default_factory=dict)


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
