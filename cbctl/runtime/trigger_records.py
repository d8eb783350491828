"""A storage trigger's record in the store (``__cb/trigger/NAME``): the format that the scheduler writes
(``scheduler/triggers.py``) and the store node indexes (``store/triggers.py``); see the latter for how
triggers work. Shared because both sides read it; it imports only the lattices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cbctl.errors import NoSuchKey
from cbctl.runtime.defaults import RESERVED_PREFIX
from cbctl.runtime.lattices import Lattice, LWWLattice

#: Key prefix of the trigger records.
PREFIX = RESERVED_PREFIX + "trigger/"


@dataclass
class TriggerRecord:
    """One trigger. Its kind is the one of ``batch``, ``window_s`` and ``join`` that is set, else per put."""

    name: str
    prefix: str
    function: str
    created_ns: int = 0
    batch: int = 0  # fire once this many keys under ``prefix`` were put since the last firing
    window_s: float = 0.0  # fire every this many seconds with the keys put under ``prefix`` (none: no call)
    join: list[str] = field(default_factory=list)  # fire once every one of these keys was put
    values: bool = False  # hand the function the keys' values too

    @property
    def kind(self) -> str:
        return "join" if self.join else "batch" if self.batch else "window" if self.window_s else "put"


def record_bytes(key: str, lattice: Lattice | None) -> bytes:
    """The encoded record a trigger key holds; ``NoSuchKey`` for a deleted (or never LWW) one."""
    if not isinstance(lattice, LWWLattice) or lattice.tombstone:
        raise NoSuchKey(key)
    return lattice.value
