"""How user values become bytes and back.

Plain data (None, bool, int, float, str, bytes, list, dict) is msgpack. Three msgpack ext types carry
the rest: numpy arrays as dtype + shape + raw buffer (never pickle, and numpy is imported only when an
array is actually seen), references to store keys (``Ref``), tuples (so they come back as tuples), and a
cloudpickle fallback for any other object. Values cross process boundaries as these bytes, opaque to
the schedulers and the store, which therefore never import user code.

The raw-buffer form is only for what it carries exactly: a plain ``ndarray`` (or numpy scalar) of a dtype that
``dtype.str`` names completely (numbers, bools, datetimes, fixed-width strings and bytes, unstructured void).
Structured and record dtypes (``dtype.str`` would say only ``V12`` and lose the fields), object dtypes, numpy
2's variable-width ``StringDType`` (its buffer holds pointers), dtypes with metadata, and subclasses (masked
arrays, ``recarray``, ``matrix``) take the pickle fallback, which keeps all of it. Masked arrays have an ext
type of their own (data, mask, fill value, hardness, each encoded as above) because numpy's own pickling of them
turns a big-endian dtype native.

Large buffers travel out of band: an array of at least ``OUT_OF_BAND_BYTES`` (anywhere in the value), and bytes
that large at the top level of a value or of an argument list, are not copied into the msgpack body. ``encode``
then returns ``Frames``: the body, which refers to them by index, and the buffers themselves (``memoryview``s of
the caller's memory), which messages send as zmq frames of their own (``frames.py``). ``decode`` makes arrays over
received frames' memory without a copy (writable: the receiver owns a frame it received); over a buffer of this
process (a value handed on without a socket) it copies, so two functions never share an array by accident.
Smaller values stay one ``bytes``: their copies cost less than frames do.

A value that cannot be decoded (damaged bytes, an object pickled by reference to a module this process cannot
import, an unpickling that raises) raises ``DecodeError``, naming what failed and what to do.
"""

from __future__ import annotations

import functools
import mmap
import sys
from typing import Any

import cloudpickle
import msgpack
import zmq

from cbctl.errors import DecodeError
from cbctl.runtime.defaults import OUT_OF_BAND_BYTES
from cbctl.runtime.wire import shared
from cbctl.runtime.wire.frames import Frames
from cbctl.runtime.wire.limits import check_key

EXT_NDARRAY = 1
EXT_REF = 2
EXT_PICKLE = 3
EXT_TUPLE = 4
EXT_MASKED = 5
EXT_NDARRAY_FRAME = 6  # an array whose buffer is out of band: [[dtype, shape, is_scalar], buffer index]
EXT_BYTES_FRAME = 7  # bytes that are out of band: the buffer index


class Ref:
    """A reference to a store key, passed as a call argument; the executor resolves it to the key's
    value (through its cache) before the function runs, as Cloudburst's references do."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        check_key(key)  # InvalidArgument for a key no user may read (cbctl's own __cb/ keys among them)
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.key == self.key

    def __hash__(self) -> int:
        return hash(("Ref", self.key))

    def __repr__(self) -> str:
        return f"Ref({self.key!r})"


class _LargeBytes:
    """Marks bytes to send out of band (msgpack packs bytes itself, without asking ``_default``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _marked(values: list[Any]) -> list[Any]:
    """``values`` with its large bytes marked for out-of-band transport (the list itself when it has none)."""
    for v in values:
        if type(v) is bytes and len(v) >= OUT_OF_BAND_BYTES:
            return [_LargeBytes(v) if type(v) is bytes and len(v) >= OUT_OF_BAND_BYTES else v for v in values]
    return values


def _pack(value: Any, buffers: list[Any] | None) -> bytes:
    """``value``'s msgpack body; its large buffers appended to ``buffers`` (None: all of it inline)."""
    return msgpack.packb(value, default=lambda v: _default(v, buffers), strict_types=True, use_bin_type=True)


class _HasLargeBuffers(Exception):
    """Raised by ``_Probe``: the value being packed has a buffer to send out of band."""


class _Probe(list):
    """The buffers list of ``encode``'s first attempt, which assumes the value has no large buffer (almost every
    value): the first buffer ``_default`` would set aside stops the attempt, and ``encode`` starts again with a
    real list."""

    def append(self, _buffer: Any) -> None:
        raise _HasLargeBuffers


def _default(value: Any, buffers: list[Any] | None) -> msgpack.ExtType:
    if type(value) is _LargeBytes:
        buffers.append(value.data)
        return msgpack.ExtType(EXT_BYTES_FRAME, msgpack.packb(len(buffers) - 1))
    if type(value) is tuple:
        items = list(value)
        return msgpack.ExtType(EXT_TUPLE, _pack(items if buffers is None else _marked(items), buffers))
    if isinstance(value, Ref):
        return msgpack.ExtType(EXT_REF, value.key.encode())
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        dtype = value.dtype
        if type(value) is numpy.ma.MaskedArray:
            mask = None if value.mask is numpy.ma.nomask else value.mask
            return msgpack.ExtType(EXT_MASKED, _pack([value.data, mask, value.fill_value, value.hardmask], buffers))
        if (dtype.kind not in _RAW_KINDS or dtype.names is not None or dtype.metadata is not None
                or not (type(value) is numpy.ndarray or isinstance(value, numpy.generic))):
            return msgpack.ExtType(EXT_PICKLE, cloudpickle.dumps(value))  # see the module docstring
        array = numpy.asarray(value)
        if not array.flags.c_contiguous:
            array = numpy.ascontiguousarray(array)
        header = [array.dtype.str, list(array.shape), isinstance(value, numpy.generic)]
        # a uint8 view, not ``array.data``: the buffer protocol refuses datetime64/timedelta64 dtypes
        raw = array.reshape(-1).view(numpy.uint8).data
        if buffers is not None and raw.nbytes >= OUT_OF_BAND_BYTES:
            buffers.append(raw)
            return msgpack.ExtType(EXT_NDARRAY_FRAME, msgpack.packb([header, len(buffers) - 1]))
        return msgpack.ExtType(EXT_NDARRAY, msgpack.packb([header, raw]))
    return msgpack.ExtType(EXT_PICKLE, cloudpickle.dumps(value))


_default_probing = functools.partial(_default, buffers=_Probe())

#: numpy dtype kinds whose ``dtype.str`` and raw bytes are the whole value (structured ``V`` excepted, above)
_RAW_KINDS = frozenset("biufcmMUSV")
#: Longest part of a failure's own message repeated in a ``DecodeError`` (an exception may carry megabytes).
_SHOWN_CHARS = 200


class _Decoder:
    """``ext_hook`` for one value: ``buffers`` are its out-of-band parts (empty for an inline value)."""

    __slots__ = ("buffers", "owned")

    def __init__(self, buffers: list[Any], owned: bool = True) -> None:
        self.buffers = buffers
        self.owned = owned  # False: the frames are someone else's too (a cache's), so arrays copy them

    def __call__(self, code: int, data: bytes) -> Any:
        if code == EXT_NDARRAY_FRAME:
            import numpy

            (dtype, shape, is_scalar), index = msgpack.unpackb(data)
            buffer = self.buffers[index]
            if type(buffer) is shared.Gone:
                raise DecodeError(buffer.reason)
            array = numpy.frombuffer(buffer, dtype=numpy.dtype(dtype)).reshape(shape)
            if is_scalar:
                return array[()]
            # a received frame, or a shared-memory segment mapped on receipt, is this receiver's alone: its memory
            # becomes the array, writable and uncopied
            return array if (type(buffer) is zmq.Frame or type(buffer) is mmap.mmap) and self.owned else array.copy()
        if code == EXT_BYTES_FRAME:
            buffer = self.buffers[msgpack.unpackb(data)]
            if type(buffer) is shared.Gone:
                raise DecodeError(buffer.reason)
            return bytes(buffer)
        return _ext_hook(code, data, self)


def _ext_hook(code: int, data: bytes, decoder: _Decoder | None = None) -> Any:
    hook = decoder or _ext_hook
    if code == EXT_TUPLE:
        return tuple(msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=False))
    if code == EXT_REF:
        return Ref(data.decode())
    if code == EXT_NDARRAY:
        import numpy

        (dtype, shape, is_scalar), buffer = msgpack.unpackb(data)
        array = numpy.frombuffer(buffer, dtype=numpy.dtype(dtype)).reshape(shape)
        return array[()] if is_scalar else array.copy()  # copy: frombuffer views are read-only
    if code == EXT_MASKED:
        import numpy

        data, mask, fill_value, hard = msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=False)
        with numpy.errstate(all="ignore"):  # numpy re-casts the fill value it made itself; nothing to warn about
            return numpy.ma.MaskedArray(data, mask=numpy.ma.nomask if mask is None else mask,
                                        fill_value=fill_value, hard_mask=hard, shrink=False)
    if code == EXT_PICKLE:
        try:
            return cloudpickle.loads(data)
        except Exception as exc:
            raise DecodeError(_unpickling_failed(exc)) from None
    return msgpack.ExtType(code, data)


def _unpickling_failed(exc: Exception) -> str:
    cause = f"{type(exc).__name__}: {_shown(exc)}"
    module = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if module:
        return (f"it holds an object pickled by reference to module {module!r}, which cannot be imported here "
                f"({cause}): make that module importable here (install it, or put it on PYTHONPATH), or store "
                "plain data (dicts, lists, numpy arrays)")
    if isinstance(exc, AttributeError):
        return (f"it holds an object pickled by reference to a class or function this process's modules do not "
                f"have ({cause}): use the same version of that module here, or store plain data")
    return f"unpickling it raised {cause}: fix the object's pickling (__reduce__/__setstate__), or store plain data"


def _shown(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        return "<str() failed>"
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def renamed(exc: DecodeError, what: str) -> DecodeError:
    """``exc`` (from ``decode``) about ``what`` ("the value under 'k'") instead of "a value"."""
    return DecodeError(what + exc.args[0].removeprefix("a value"))


def encode(value: Any, out_of_band: bool = True) -> bytes | Frames:
    """Serialise one value (see the module docstring for what travels how): bytes, or ``Frames`` when it holds
    buffers large enough to travel out of band (never with ``out_of_band=False``: for what must be one ``bytes``,
    such as a value for the Redis backend)."""
    if not out_of_band:
        return _pack(value, None)
    if type(value) is list:
        value = _marked(value)
    elif type(value) is bytes and len(value) >= OUT_OF_BAND_BYTES:
        value = _LargeBytes(value)
    try:  # the hot path: a small value, packed with no per-call closure
        return msgpack.packb(value, default=_default_probing, strict_types=True, use_bin_type=True)
    except _HasLargeBuffers:
        buffers: list[Any] = []
        body = _pack(value, buffers)
        return Frames([body, *buffers])


def inline(encoded: bytes | Frames) -> bytes:
    """An encoded value as one ``bytes`` (what stored results, causal values and triggered calls' arguments keep),
    decoding and encoding it again if need be."""
    return encoded if type(encoded) is bytes else encode(decode(encoded), out_of_band=False)  # type: ignore[return-value]


def encode_list(encoded: list[bytes | Frames]) -> bytes | Frames:
    """The encoding of the list of already-encoded values (a multi-exec gather): an array header and the values'
    bytes, or, when one of them is out of band, decoded and encoded again (out-of-band indexes are per value)."""
    if all(type(e) is bytes for e in encoded):
        return msgpack.Packer().pack_array_header(len(encoded)) + b"".join(encoded)  # type: ignore[arg-type]
    return encode([decode(e) for e in encoded])


def decode(data: bytes | Frames, what: str = "a value", owned: bool = True) -> Any:
    """Inverse of ``encode``; unpickling only happens for values that were pickled. ``DecodeError`` saying
    that ``what`` cannot be decoded here, and why, for bytes that are not a value or do not unpickle here.
    ``owned=False``: ``data``'s received frames stay someone else's (an executor cache holds them), so arrays
    are copies, not views of them."""
    try:
        if type(data) is Frames:
            parts = data.parts
            return msgpack.unpackb(parts[0], ext_hook=_Decoder(parts[1:], owned), raw=False, strict_map_key=False)
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except DecodeError as exc:
        raise DecodeError(f"{what} cannot be decoded here: {exc.args[0]}") from None
    except Exception as exc:
        raise DecodeError(f"{what} cannot be decoded here: its bytes are not a value cbctl wrote (damaged, or "
                          f"written by another program) ({type(exc).__name__}: {_shown(exc)})") from None


def find_refs(values: Any) -> list[str]:
    """Keys referenced by ``Ref`` at the top level of an argument list (what the scheduler may use
    for locality and the executor resolves)."""
    return [v.key for v in values if isinstance(v, Ref)]
