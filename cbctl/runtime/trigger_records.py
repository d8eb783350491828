"""A storage trigger's record in the store (``__cb/trigger/NAME``): the format that the scheduler writes
(``scheduler/triggers.py``) and the store node indexes (``store/triggers.py``); see the latter for how
triggers work. Shared because both sides read it; it imports only the lattices.
"""

from __future__ import annotations

from dataclasses import dataclass

from cbctl.errors import NoSuchKey
from cbctl.runtime.defaults import RESERVED_PREFIX
from cbctl.runtime.lattices import Lattice, LWWLattice

#: Key prefix of the trigger records.
PREFIX = RESERVED_PREFIX + "trigger/"


@dataclass
class TriggerRecord:
    name: str
    prefix: str
    function: str
    created_ns: int = 0


def record_bytes(key: str, lattice: Lattice | None) -> bytes:
    """The encoded record a trigger key holds; ``NoSuchKey`` for a deleted (or never LWW) one."""
    if not isinstance(lattice, LWWLattice) or lattice.tombstone:
        raise NoSuchKey(key)
    return lattice.value
