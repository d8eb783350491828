"""How a message becomes a frame and back: the ``Message`` base, the ``@message(kind)`` registry, ``unpack`` with
its generated per-kind field checks (types, then ``Valid`` values), and the version refusal. The catalogue of
kinds is ``messages.py``; every other module imports messages from there.

A message is one zmq frame: the msgpack array ``[PROTOCOL_VERSION, KIND, *fields]``, with the fields in
declaration order. A message that carries large encoded values (``Frames``: a call's arguments, a result, a put
value, see ``serialization``) is several frames instead: ``MULTIPART_MARK`` + that msgpack header, where each such
value is a small ``EXT_FRAMES`` reference, then the values' buffers as frames of their own, sent from their memory
and received into zmq's (``copy=False``), so a process that only forwards a value (the scheduler) never copies or
parses its bytes. Between processes of one host a buffer's frame is instead a small handle to shared memory the
value was lent through (``shared.py``): ``unpack`` maps it in place, in every process but the scheduler, which
forwards handles as they came. Small messages keep the one-frame form: it is the hot path.

``unpack`` is the only place a frame is trusted: anything that is not a well-formed message
of this version, with every field of its declared type and value, raises ``ProtocolError``, which servers log,
count and drop.

Kind 0 is reserved, for ever, for one frame whose layout never changes: ``[sender_version, 0, text]``, a
server's answer to a frame of another protocol version (``version_refusal``), so the peer is told in a form any
version reads, and ``unpack`` turns it into a ``ProtocolError`` carrying the text.
"""

from __future__ import annotations

import math
import operator
import re
import struct
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Annotated, Any, ClassVar

import msgpack

from cbctl.errors import ProtocolError
from cbctl.runtime.defaults import PROTOCOL_VERSION
from cbctl.runtime.wire import shared
from cbctl.runtime.wire.limits import Oversized

_KINDS: dict[int, type[Message]] = {}


@dataclass(frozen=True)
class Valid:
    """``Annotated`` metadata: a check of a field's value, made at unpack after its type check. Types alone let
    through values that end a server later, far from the frame (a negative pid reaching psutil on a timer); the
    values that reach the OS, psutil, zmq or a file name are checked here, once, like the types."""

    predicate: Callable[[Any], bool]
    what: str  # what a good value is, for the error: "a pid (1 to 2**22)"


#: Linux's PID_MAX_LIMIT: no process has a larger pid (2**22 on 64-bit kernels).
MAX_PID = 2**22
#: Counts, indexes, depths and versions: far above anything real, far below what overflows a C long.
MAX_COUNT = 2**31 - 1
#: Longest address accepted: an ipc path is bounded by the OS (about 100 bytes); a tcp address by DNS names.
MAX_ADDRESS_CHARS = 512
#: Executor ids: ``executor-N``, or ``HOST/executor-N`` for an executor that joined from another host.
EXECUTOR_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,62}/)?executor-[0-9]{1,7}")
_ADDRESS = re.compile(r"(?:ipc://[^\x00]+|tcp://[A-Za-z0-9_.:\[\]-]+:[0-9]{1,5})")


def is_address(value: str) -> bool:
    """Whether ``value`` is a zmq address a server may connect to: ``ipc://PATH`` or ``tcp://HOST:PORT``."""
    return len(value) <= MAX_ADDRESS_CHARS and _ADDRESS.fullmatch(value) is not None


def is_executor_id(value: str) -> bool:
    return len(value) <= 80 and EXECUTOR_ID.fullmatch(value) is not None


Pid = Annotated[int, Valid(lambda v: 0 < v <= MAX_PID, "a pid (1 to 2**22)")]
Count = Annotated[int, Valid(lambda v: 0 <= v <= MAX_COUNT, "a count (0 to 2**31-1)")]
#: Versions are registration times in nanoseconds: any non-negative int64.
Version = Annotated[int, Valid(lambda v: 0 <= v < 2**63, "a version (a non-negative int64)")]
Address = Annotated[str, Valid(is_address, "an address (ipc://PATH or tcp://HOST:PORT)")]
AddressOrNone = Annotated[str, Valid(lambda v: v == "" or is_address(v), "an address or ''")]
ExecutorId = Annotated[str, Valid(is_executor_id, "an executor id (executor-N or HOST/executor-N)")]
ExecutorIdOrNone = Annotated[str, Valid(lambda v: v == "" or is_executor_id(v), "an executor id or ''")]
#: A joined host's name: what its executors' ids start with (``HOST/executor-N``).
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
HostName = Annotated[str, Valid(lambda v: HOST_NAME.fullmatch(v) is not None, "a host name (letters, digits, _.-)")]
ExecutorType = Annotated[str, Valid(lambda v: v in ("cpu", "gpu"), "an executor type (cpu or gpu)")]
Role = Annotated[str, Valid(lambda v: v in ("store", "scheduler", "executor", "triggers"),
                           "a role (store, scheduler, executor, triggers)")]
#: A utilization: finite and non-negative (NaN compares false with everything, and would stick in a policy).
Utilization = Annotated[float, Valid(lambda v: math.isfinite(v) and 0.0 <= v <= 1e6, "a finite utilization >= 0")]

#: First byte of the header frame of a multi-frame message. msgpack begins nothing with 0xc1 (it is the one byte
#: the format never uses), so a one-frame message is never mistaken for a header, and a receiver tells the two
#: apart by one byte, without asking zmq whether more frames follow (which costs on every hot-path receive).
MULTIPART_MARK = b"\xc1"
#: The header's ext type for an out-of-band value: packed ``(first frame, count)``, frames counted from the header.
EXT_FRAMES = 1
_FRAMES_REF = struct.Struct(">II")


class Frames:
    """An encoded value that travels as zmq frames of its own: ``parts[0]`` is its msgpack body, the rest the raw
    buffers it refers to (``bytes``, ``memoryview``s of the sender's arrays, or received ``zmq.Frame``s).
    Immutable by convention: a process that forwards one sends the same parts on. ``len()`` is its size in bytes,
    as ``len`` of an inline value's bytes is, so the size limits read the same for both forms."""

    __slots__ = ("parts", "nbytes")

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.nbytes = sum(shared.part_nbytes(p) for p in parts)  # a handle's: its value's

    def __len__(self) -> int:
        return self.nbytes

    def __repr__(self) -> str:
        return f"Frames({len(self.parts)} parts, {self.nbytes} bytes)"


#: A field holding an encoded user value: ``bytes`` inline in the frame, or ``Frames`` out of band.
EncodedValue = bytes | Frames


#: The reserved kind of a version refusal (see the module docstring); no message class may use it.
VERSION_REFUSAL_KIND = 0


class Message:
    """Base of all messages: ``pack`` to a frame, ``unpack`` (module function) back."""

    __slots__ = ()
    KIND: ClassVar[int]
    _FIELDS: ClassVar[tuple[str, ...]]
    _VALUES: ClassVar[Callable[[Message], tuple[Any, ...]]]  # the fields' values in order, in one C call
    _CHECK: ClassVar[Callable[[list[Any]], int]]  # position of a decoded frame's first ill-typed field, or 0

    def pack(self) -> bytes | list[Any]:
        """One frame; or, when a field holds ``Frames``, the list of frames of a multi-frame message (send it
        with ``process.send_message``)."""
        try:
            return _packer().pack([PROTOCOL_VERSION, self.KIND, *self._VALUES(self)])
        except TypeError:  # msgpack meets a Frames (or a value no message may carry: pack_frames says so)
            return pack_frames([PROTOCOL_VERSION, self.KIND, *self._VALUES(self)])


_packers = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's ``Packer``: ``msgpack.packb`` makes a new one per frame, a cost on every hop; one is not
    shared between threads (a client's may pack in several at once). It empties itself after each ``pack``,
    and after a failed one too."""
    try:
        return _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer()
        return packer


def pack_frames(data: list[Any]) -> list[Any]:
    """``data`` as a multi-frame message: every ``Frames`` in it (at any depth) replaced by a reference, and
    its parts appended as frames of their own, untouched."""
    frames: list[Any] = [b""]

    def refer(value: Any) -> msgpack.ExtType:
        if type(value) is not Frames:
            raise TypeError(f"messages cannot carry a {type(value).__name__}")
        ref = _FRAMES_REF.pack(len(frames), len(value.parts))
        frames.extend(value.parts)
        return msgpack.ExtType(EXT_FRAMES, ref)

    frames[0] = MULTIPART_MARK + msgpack.packb(data, default=refer)
    return frames


def _unpack_header(frames: list[Any]) -> Any:
    """The decoded header of a multi-frame message, each reference replaced by its ``Frames``."""
    header = frames[0]
    if header[:1] != MULTIPART_MARK:
        raise ValueError("its first frame is not a multi-frame header")
    if shared.attach_on_unpack:
        for part in frames:
            if type(part) is shared.Handle:
                shared.attach_parts(frames)  # in place: a server finds a segment that is gone among them
                break

    def resolve(code: int, data: bytes) -> Any:
        if code != EXT_FRAMES or len(data) != _FRAMES_REF.size:
            return msgpack.ExtType(code, data)
        first, count = _FRAMES_REF.unpack(data)
        if first < 1 or count < 1 or first + count > len(frames):
            raise ValueError(f"it refers to frames {first} to {first + count - 1} of {len(frames)}")
        return Frames(frames[first:first + count])

    return msgpack.unpackb(memoryview(header)[1:], ext_hook=resolve, raw=False, strict_map_key=False)


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
        cls._CHECK = staticmethod(_check_compiled_on_first_use(cls))
        _KINDS[kind] = cls
        return cls

    return register


def unpack(frame: bytes | list[Any]) -> Message:
    """Parse one frame, or the frames of a multi-frame message (a list, header first); raise ``ProtocolError``
    for anything that is not a message of this version, and for a peer's version refusal (with its text)."""
    try:
        if type(frame) is list:
            data = _unpack_header(frame)
        else:
            data = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        if type(frame) is Oversized:  # what a receiver kept of a message over its bound (``process.receive_rest``)
            raise ProtocolError(frame.text) from None
        if type(frame) is list:
            raise ProtocolError(f"message of {len(frame)} frames is not a well-formed multi-frame message: "
                                f"{exc}") from None
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
        name = cls._FIELDS[abs(bad) - 2]
        described = _describe(typing.get_type_hints(cls, include_extras=True)[name])
        if bad < 0:  # the type is right, the value is not
            shown = repr(data[-bad])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise ProtocolError(f"{cls.__name__}.{name} is {shown}, not {described}: the frame is refused")
        raise ProtocolError(f"{cls.__name__}.{name} is a {type(data[bad]).__name__}, not {described}: "
                            "the sender is not speaking this protocol")
    return message


def _describe(annotation: Any) -> str:
    """An annotation as an error message shows it: ``list[str]``, or a checked value's description."""
    if typing.get_origin(annotation) is Annotated:
        return annotation.__metadata__[0].what
    if type(annotation) is type:
        return annotation.__name__
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (list, dict):
        return f"{typing.get_origin(annotation).__name__}[{', '.join(_describe(a) for a in args)}]"
    return str(annotation).replace("typing.", "")


def _check_compiled_on_first_use(cls: type) -> Callable[[list[Any]], int]:
    """The kind's check, compiled (``_compile_checks``) when a process unpacks its first frame of the kind, and
    from then on called directly (it replaces this stand-in on the class). Compiled at import, the 56 kinds'
    checks were a third of importing this catalogue, which `cbctl up`'s supervisor and forkserver both do on
    the way to ready, while a process unpacks only a few kinds. Two threads meeting a kind at once both compile
    it: harmless, the second assignment wins with an equal function."""

    def check(data: list[Any]) -> int:
        compiled = _compile_checks(cls)
        cls._CHECK = staticmethod(compiled)
        return compiled(data)

    return check


def _compile_checks(cls: type) -> Callable[[list[Any]], int]:
    """One function per kind that checks a decoded frame's fields against the annotations, as msgpack decodes
    them, and returns the position of the first ill-typed one (0: all fine). Generated as source, as dataclasses
    generates ``__init__``, because this runs for every frame on the call path: one function with the checks
    inlined costs about a microsecond less per frame than a loop over per-field predicates.

    Exact types (``type(v) is int``), so a bool is not an int; a float field takes ints too (``1`` is as good as
    ``1.0``). Containers are checked element by element (a trigger's schedule is a few entries, and handlers
    index into it). Fields left at their defaults (absent from the frame) need no check. A field annotated with
    ``Valid`` has its value checked after its type: a failure there returns the position negated."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in fields(cls)]
    required = sum(1 for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)
    lines = ["def check(d):", "    n = len(d)"]
    predicates: dict[str, Any] = {"_all_str": _all_str, "_all_int": _all_int}
    for i, name in enumerate(names):
        annotation = hints[name]
        value_test = None
        if typing.get_origin(annotation) is Annotated:  # top level: type and value fail apart, for the error
            value_test = _value_test(annotation, f"d[{i + 2}]", predicates)
            annotation = annotation.__origin__
        test = _type_test(annotation, f"d[{i + 2}]", predicates)
        guard = "" if i < required else f"n > {i + 2} and "
        if test is not None:
            lines.append(f"    if {guard}not ({test}): return {i + 2}")
        if value_test is not None:
            lines.append(f"    if {guard}not ({value_test}): return -{i + 2}")
    lines.append("    return 0")
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), predicates, namespace)  # noqa: S102 - our own source
    return namespace["check"]


def _value_test(annotation: Any, expr: str, predicates: dict[str, Any]) -> str:
    """The call of an ``Annotated`` field's ``Valid`` predicate on ``expr``, registered in ``predicates``."""
    name = f"_valid_{len(predicates)}"
    predicate = annotation.__metadata__[0].predicate
    predicates[name] = _remembered(predicate) if annotation.__origin__ is str else predicate
    return f"{name}({expr})"


#: Strings each remembering check keeps as known good: far above the addresses and executor ids of a cluster.
REMEMBERED_STRINGS = 4096


def _remembered(predicate: Callable[[str], bool]) -> Callable[[str], bool]:
    """``predicate`` (a regular expression's match, for an address or an executor id) with its good answers
    remembered: a cluster's frames name the same few addresses in every call, and a set lookup costs a fraction
    of a match. Bounded: past ``REMEMBERED_STRINGS`` good strings it starts over (a peer naming ever new ones
    costs matches, never memory)."""
    good: set[str] = set()

    def check(value: str) -> bool:
        if value in good:
            return True
        if not predicate(value):
            return False
        if len(good) >= REMEMBERED_STRINGS:
            good.clear()
        good.add(value)
        return True

    return check


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


def _each(annotation: Any, predicates: dict[str, Any]) -> str:
    """The name of a generated function, registered in ``predicates``, that says whether every element of an
    iterable is of ``annotation``: a loop, which costs about half of ``all()`` over a generator."""
    name = f"_each_{len(predicates)}"
    predicates[name] = None  # reserves the name (nested element types register their own first)
    test = _type_test(annotation, "x", predicates)
    source = f"def {name}(values):\n    for x in values:\n        if not ({test}): return False\n    return True"
    namespace: dict[str, Any] = {}
    exec(source, predicates, namespace)  # noqa: S102 - our own source
    predicates[name] = namespace[name]
    return name


def _type_test(annotation: Any, expr: str, predicates: dict[str, Any]) -> str | None:
    """A Python expression that is true when ``expr`` holds a value of ``annotation`` (None for ``Any``); a
    checked element type (``list[Address]``) checks each element's value too."""
    if typing.get_origin(annotation) is Annotated:
        test = _type_test(annotation.__origin__, expr, predicates)
        return f"({test}) and {_value_test(annotation, expr, predicates)}"
    if annotation is Any:
        return None
    if annotation == EncodedValue:
        predicates["_Frames"] = Frames
        return f"type({expr}) is bytes or type({expr}) is _Frames"
    if annotation is float:
        return f"type({expr}) is float or type({expr}) is int"
    if annotation in (int, str, bytes, bool):
        return f"type({expr}) is {annotation.__name__}"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        test = _type_test(inner, expr, predicates)
        return None if test is None else f"{expr} is None or ({test})"
    if origin is list:
        if args[0] is Any:
            return f"type({expr}) is list"
        if args[0] in (str, int):
            return f"type({expr}) is list and _all_{args[0].__name__}({expr})"
        return f"type({expr}) is list and {_each(args[0], predicates)}({expr})"
    if origin is dict and args[0] is str:
        keys = f"type({expr}) is dict and _all_str({expr})"
        if args[1] is Any:
            return keys
        if args[1] in (str, int):
            return f"{keys} and _all_{args[1].__name__}({expr}.values())"
        return f"{keys} and {_each(args[1], predicates)}({expr}.values())"
    raise TypeError(f"messages cannot carry fields of type {annotation!r}: use msgpack types, str-keyed dicts")


def version_refusal(frame: bytes | list[Any], server: str) -> bytes | None:
    """The frame ``server`` (e.g. "the scheduler") answers ``frame`` with when ``frame`` is a message of another
    protocol version, else None (nothing to answer: not a message, this version, or itself a refusal, which
    must never be answered or two servers could refuse each other for ever). Called only after ``unpack``
    failed, so the second parse costs nothing on the way of a good frame."""
    if type(frame) is list:  # a multi-frame message: its header says the version
        frame = bytes(frame[0][1:]) if frame and frame[0][:1] == MULTIPART_MARK else b""
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
