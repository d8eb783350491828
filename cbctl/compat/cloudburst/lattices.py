"""Anna's lattice classes, as ``anna.lattices`` offers them to Cloudburst programs.

Cloudburst's user library stores whatever ``put`` is given; a lattice object put under a key is kept as that
object, and ``get`` returns it (``cp.loads(cb.get(k).reveal())`` is how Cloudburst's own benchmarks read
an ``LWWPairLattice`` back). These classes have Anna's constructors, checks, ``reveal``, ``assign`` and ``merge``,
so such code runs as it is. They are plain Python values here: cbctl's store keeps its own lattices (every
write a merge), and ``serialize()`` (Anna's protobuf form) has nothing to produce.
"""

from __future__ import annotations

from typing import Any


class Lattice:
    def __init__(self) -> None:
        raise NotImplementedError

    def __str__(self) -> str:
        return str(self.reveal())

    def __eq__(self, other: object) -> bool:
        return other is not None and type(other) is type(self) and self.reveal() == other.reveal()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment] - mutable, equal by content, as Anna's

    def reveal(self) -> Any:
        raise NotImplementedError

    def assign(self, value: Any) -> None:
        raise NotImplementedError

    def merge(self, other: Any) -> Any:
        raise NotImplementedError

    def serialize(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.serialize() gives Anna's protobuf form, which cbctl does "
                                  "not use: put the lattice itself (cb.put(key, lattice)), or its reveal()")


class LWWPairLattice(Lattice):
    def __init__(self, timestamp: int, value: bytes) -> None:
        if type(timestamp) is not int or type(value) is not bytes:
            raise ValueError("LWWPairLattice must be a timestamp-bytes pair.")
        self.ts = timestamp
        self.val = value

    def reveal(self) -> bytes:
        return self.val

    def assign(self, value: tuple[int, bytes]) -> None:
        if type(value) is not tuple or len(value) != 2 or type(value[0]) is not int or type(value[1]) is not bytes:
            raise ValueError("LWWPairLattice must be a timestamp-bytes pair.")
        self.ts, self.val = value

    def merge(self, other: LWWPairLattice) -> LWWPairLattice:
        return other if other.ts > self.ts else self


class SetLattice(Lattice):
    def __init__(self, value: set | None = None) -> None:
        value = set() if value is None else value
        if type(value) is not set:
            raise ValueError("SetLattice can only be formed from a set.")
        self.val = value

    def reveal(self) -> set:
        return self.val

    def assign(self, value: set) -> None:
        if type(value) is not set:
            raise ValueError("SetLattice can only be formed from a set.")
        self.val = value

    def merge(self, other: SetLattice) -> SetLattice:
        if type(other) is not SetLattice:
            raise ValueError(f"Cannot merge SetLattice with invalid type {type(other)}.")
        return SetLattice(self.val | other.val)


class ListBasedOrderedSet:
    """A sorted list without duplicates (Anna's cheap-to-deserialise ordered set)."""

    def __init__(self, iterable: Any = ()) -> None:
        self.lst: list[Any] = []
        for value in iterable:
            self.insert(value)

    def insert(self, value: Any) -> None:
        if not self.lst or value > self.lst[-1]:
            self.lst.append(value)
            return
        index, present = self._index_of(value)
        if not present:
            self.lst.insert(index, value)

    def _index_of(self, value: Any) -> tuple[int, bool]:
        low, high = 0, len(self.lst)
        while low < high:
            middle = (low + high) // 2
            if self.lst[middle] == value:
                return middle, True
            if value < self.lst[middle]:
                high = middle
            else:
                low = middle + 1
        return low, False


class OrderedSetLattice(Lattice):
    def __init__(self, value: ListBasedOrderedSet | None = None) -> None:
        value = ListBasedOrderedSet() if value is None else value
        if type(value) is not ListBasedOrderedSet:
            raise ValueError("OrderedSetLattice can only be formed from a ListBasedOrderedSet.")
        self.val = value

    def reveal(self) -> list:
        return self.val.lst

    def assign(self, value: ListBasedOrderedSet) -> None:
        if type(value) is not ListBasedOrderedSet:
            raise ValueError("OrderedSetLattice can only be formed from a ListBasedOrderedSet.")
        self.val = value

    def merge(self, other: OrderedSetLattice) -> OrderedSetLattice:
        if type(other) is not OrderedSetLattice:
            raise ValueError(f"Cannot merge OrderedSetLattice with type {type(other)}.")
        return OrderedSetLattice(ListBasedOrderedSet(sorted(set(self.val.lst) | set(other.val.lst))))


class MaxIntLattice(Lattice):
    def __init__(self, value: int) -> None:
        if type(value) is not int:
            raise ValueError("MaxIntLattice only accepts integers.")
        self.value = value

    def reveal(self) -> int:
        return self.value

    def assign(self, value: int) -> None:
        if type(value) is not int:
            raise ValueError("MaxIntLattice only accepts integers.")
        self.value = value

    def merge(self, other: MaxIntLattice) -> MaxIntLattice:
        """In place, as Anna's (which returns None; this returns ``self`` as well)."""
        if type(other) is not MaxIntLattice:
            raise ValueError(f"Cannot merge MaxIntLattice with type {type(other)}.")
        self.value = max(self.value, other.value)
        return self


class MapLattice(Lattice):
    def __init__(self, mp: dict) -> None:
        if type(mp) is not dict:
            raise ValueError("MapLattice only accepts dict data structures.")
        self.mp = mp

    def reveal(self) -> dict:
        return self.mp

    def assign(self, mp: dict) -> None:
        if type(mp) is not dict:
            raise ValueError("MapLattice only accepts dict data structures.")
        self.mp = mp

    def merge(self, other: MapLattice) -> MapLattice:
        """In place: each key's lattices merged, keys only in ``other`` added; returns ``self``."""
        if not isinstance(other, MapLattice):
            raise ValueError(f"Cannot merge MapLattice with type {type(other)}.")
        for key, value in other.mp.items():
            if key not in self.mp:
                self.mp[key] = value
                continue
            if not isinstance(self.mp[key], Lattice) or not isinstance(value, Lattice):
                raise ValueError("Cannot merge a MapLattice with values that are not lattice types.")
            merged = self.mp[key].merge(value)
            if merged is not None:
                self.mp[key] = merged
        return self

    def copy(self) -> MapLattice:
        return type(self)(self.mp.copy())


class VectorClock(MapLattice):
    def __init__(self, mp: dict, deserialize: bool = False) -> None:
        if type(mp) is not dict:
            raise ValueError(f"VectorClock must be a dict, not {type(mp)}.")
        if deserialize:
            if any(type(v) is not int for v in mp.values()):
                raise ValueError("Cannot deserialize VectorClock from non-integer values.")
            mp = {key: MaxIntLattice(count) for key, count in mp.items()}
        elif any(type(v) is not MaxIntLattice for v in mp.values()):
            raise ValueError("VectorClock values must be MaxIntLattices.")
        self.mp = mp

    def assign(self, mp: dict) -> None:
        if type(mp) is not dict or any(type(v) is not MaxIntLattice for v in mp.values()):
            raise ValueError("VectorClock must be a dict of MaxIntLattices.")
        self.mp = mp

    def update(self, key: str, count: int) -> None:
        if key in self.mp:
            self.mp[key].merge(MaxIntLattice(count))

    def copy(self) -> VectorClock:
        return VectorClock({key: MaxIntLattice(v.value) for key, v in self.mp.items()})


class SingleKeyCausalLattice(Lattice):
    def __init__(self, vector_clock: VectorClock, value: SetLattice) -> None:
        if type(vector_clock) is not VectorClock:
            raise ValueError("Vector clock of SingleKeyCausalLattice must be a VectorClock.")
        if type(value) is not SetLattice:
            raise ValueError("Value of SingleKeyCausalLattice must be a SetLattice.")
        self.vector_clock = vector_clock
        self.value = value

    def reveal(self) -> list:
        return list(self.value.reveal())

    def assign(self, value: SetLattice) -> None:
        if type(value) is not SetLattice:
            raise ValueError("Value of SingleKeyCausalLattice must be a SetLattice.")
        self.value = value

    def merge(self, other: SingleKeyCausalLattice) -> SingleKeyCausalLattice:
        """In place: the dominating version wins, concurrent versions' values are kept together."""
        if type(other) is not type(self):
            raise ValueError(f"Cannot merge {type(self).__name__} with type {type(other)}.")
        previous = self.vector_clock.copy()
        self.vector_clock.merge(other.vector_clock.copy())
        if self.vector_clock == other.vector_clock:
            self._take(other)  # the other version dominates
        elif self.vector_clock != previous:
            self._join(other)  # concurrent
        return self

    def _take(self, other: Any) -> None:
        self.value = other.value

    def _join(self, other: Any) -> None:
        self.value = self.value.merge(other.value)


class MultiKeyCausalLattice(SingleKeyCausalLattice):
    def __init__(self, vector_clock: VectorClock, dependencies: MapLattice, value: SetLattice) -> None:
        if type(dependencies) is not MapLattice:
            raise ValueError("Dependency set of MultiKeyCausalLattice must be a MapLattice.")
        super().__init__(vector_clock, value)
        self.dependencies = dependencies

    def _take(self, other: Any) -> None:
        self.value, self.dependencies = other.value, other.dependencies

    def _join(self, other: Any) -> None:
        self.value = self.value.merge(other.value)
        self.dependencies.merge(other.dependencies)


class PriorityLattice(Lattice):
    def __init__(self, priority: float, value: bytes) -> None:
        if type(priority) is not float or type(value) is not bytes:
            raise ValueError("PriorityLattice must be a double-bytes pair.")
        self.priority = priority
        self.value = value

    def reveal(self) -> bytes:
        return self.value

    def assign(self, value: tuple[float, bytes]) -> None:
        if type(value) is not tuple or len(value) != 2 or type(value[0]) is not float or type(value[1]) is not bytes:
            raise ValueError("PriorityLattice must be a double-bytes pair.")
        self.priority, self.value = value

    def merge(self, other: PriorityLattice) -> PriorityLattice:
        return other if other.priority < self.priority else self
