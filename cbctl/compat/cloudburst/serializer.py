"""Cloudburst's ``Serializer``, for programs that serialise values by hand.

cbctl serialises every argument, result and stored value itself (msgpack, numpy buffers, cloudpickle), so the
compat layer never needs this class; it exists so that code importing it runs. ``dump`` gives cloudpickle
bytes (Cloudburst's DEFAULT serializer; strings and arrays too, where Cloudburst used UTF-8 and Arrow),
``dump_lattice`` wraps a value as Cloudburst's serializer does (a ``set`` in a ``SetLattice``, anything else in
an ``LWWPairLattice``), and ``load`` / ``load_lattice`` undo them.
"""

from __future__ import annotations

import time
from typing import Any

import cloudpickle

from cbctl.compat.cloudburst.lattices import LWWPairLattice, MapLattice, SetLattice


class Serializer:
    def __init__(self, string_format: str = "raw_unicode_escape") -> None:
        self.string_format = string_format

    def dump(self, data: Any, valobj: Any = None, serialize: bool = True) -> bytes:
        return data if type(data) is bytes else cloudpickle.dumps(data)

    def load(self, data: bytes) -> Any:
        if type(data) is not bytes:
            raise ValueError(f"Input to load was of unsupported type {type(data)}.")
        try:
            return cloudpickle.loads(data)
        except Exception:  # noqa: BLE001 - not a pickle: raw bytes, as Cloudburst's load returns them
            return data

    def dump_lattice(self, value: Any, typ: type | None = None, causal_dependencies: dict | None = None) -> Any:
        if typ is None:
            typ = SetLattice if isinstance(value, set) else LWWPairLattice
        if typ is SetLattice:
            return SetLattice({self.dump(v) for v in value})
        if typ is MapLattice:
            return MapLattice({k: self.dump_lattice(v) for k, v in value.items()})
        if typ is LWWPairLattice:
            return LWWPairLattice(time.time_ns(), self.dump(value))
        raise ValueError(f"Unexpected lattice type: {typ}: cbctl's compat serializer makes LWWPairLattice, "
                         "SetLattice and MapLattice")

    def load_lattice(self, lattice: Any) -> Any:
        if isinstance(lattice, LWWPairLattice):
            return self.load(lattice.reveal())
        if isinstance(lattice, SetLattice):
            return [self.load(v) for v in lattice.reveal()]
        if isinstance(lattice, MapLattice):
            return {k: self.load_lattice(v) for k, v in lattice.reveal().items()}
        raise ValueError(f"Unsupported lattice type: {type(lattice)}")
