"""How user values become bytes and back.

Plain data (None, bool, int, float, str, bytes, list, dict) is msgpack. Three msgpack ext types carry
the rest: numpy arrays as dtype + shape + raw buffer (never pickle, and numpy is imported only when an
array is actually seen), references to store keys (``Ref``), tuples (so they come back as tuples), and a
cloudpickle fallback for any other object. Values cross process boundaries as these bytes, opaque to
the schedulers and the store, which therefore never import user code.
"""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle
import msgpack

from cbctl.errors import InvalidArgument

EXT_NDARRAY = 1
EXT_REF = 2
EXT_PICKLE = 3
EXT_TUPLE = 4


class Ref:
    """A reference to a store key, passed as a call argument; the executor resolves it to the key's
    value (through its cache) before the function runs, as Cloudburst's references do."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"Ref needs a non-empty string key, got {key!r}")
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.key == self.key

    def __hash__(self) -> int:
        return hash(("Ref", self.key))

    def __repr__(self) -> str:
        return f"Ref({self.key!r})"


def _default(value: Any) -> msgpack.ExtType:
    if type(value) is tuple:
        return msgpack.ExtType(EXT_TUPLE, encode(list(value)))
    if isinstance(value, Ref):
        return msgpack.ExtType(EXT_REF, value.key.encode())
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        array = numpy.asarray(value)
        if array.dtype.hasobject:
            return msgpack.ExtType(EXT_PICKLE, cloudpickle.dumps(value))
        if not array.flags.c_contiguous:
            array = numpy.ascontiguousarray(array)
        header = [array.dtype.str, list(array.shape), isinstance(value, numpy.generic)]
        # a uint8 view, not ``array.data``: the buffer protocol refuses datetime64/timedelta64 dtypes
        raw = array.reshape(-1).view(numpy.uint8).data
        return msgpack.ExtType(EXT_NDARRAY, msgpack.packb([header, raw]))
    return msgpack.ExtType(EXT_PICKLE, cloudpickle.dumps(value))


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_TUPLE:
        return tuple(decode(data))
    if code == EXT_REF:
        return Ref(data.decode())
    if code == EXT_NDARRAY:
        import numpy

        (dtype, shape, is_scalar), buffer = msgpack.unpackb(data)
        array = numpy.frombuffer(buffer, dtype=numpy.dtype(dtype)).reshape(shape)
        return array[()] if is_scalar else array.copy()  # copy: frombuffer views are read-only
    if code == EXT_PICKLE:
        return cloudpickle.loads(data)
    return msgpack.ExtType(code, data)


def encode(value: Any) -> bytes:
    """Serialise one value (see the module docstring for what travels how)."""
    return msgpack.packb(value, default=_default, strict_types=True, use_bin_type=True)


def decode(data: bytes) -> Any:
    """Inverse of ``encode``; unpickling only happens for values that were pickled."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def find_refs(values: Any) -> list[str]:
    """Keys referenced by ``Ref`` at the top level of an argument list (what the scheduler may use
    for locality and the executor resolves)."""
    return [v.key for v in values if isinstance(v, Ref)]
