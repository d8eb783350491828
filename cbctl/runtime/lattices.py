"""Lattices: the merge-able values the store keeps under every key.

Every write to the store is a merge, and `merge` is associative, commutative and idempotent, so replicas that
see the same writes in any order, with duplicates, end in the same state. Lattices are immutable values (equal
and hashable by content); `to_wire` / `lattice_from_wire` convert to and from msgpack-ready lists whose first
element is the kind tag. Pure: no I/O and nothing from the rest of cbctl.
"""

from __future__ import annotations

import abc
import enum
import functools
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar


class Lattice(abc.ABC):
    """A join-semilattice value. Subclasses are immutable and compare and hash by value."""

    __slots__ = ()
    kind: ClassVar[str]
    _wire_arity: ClassVar[int] = 1  # fields after the kind tag

    @abc.abstractmethod
    def merge(self, other: Any) -> Lattice:
        """The least upper bound of `self` and `other`, a new value; neither operand changes."""

    @abc.abstractmethod
    def reveal(self) -> Any:
        """The value a user reading the key sees."""

    @abc.abstractmethod
    def to_wire(self) -> list:
        """A msgpack-serialisable `[kind, *fields]`, deterministic (sorted) for equal lattices."""

    @classmethod
    def _from_wire(cls, fields: list) -> Lattice:
        return cls(*fields)

    def _check_mergeable(self, other: object) -> None:
        if type(other) is not type(self):
            kind = getattr(other, "kind", type(other).__name__)  # never the value itself: it may be huge
            raise TypeError(f"cannot merge a {self.kind!r} lattice with a {kind!r} one: the kinds must match")


class _DictBacked(Lattice):
    """A lattice whose whole state is one private dict, never mutated after construction."""

    __slots__ = ("_state",)
    _state: dict

    @classmethod
    def _of(cls, state: dict) -> Any:
        """Wrap an already-valid state without re-validating it (merge results)."""
        lattice = cls.__new__(cls)
        lattice._state = state
        return lattice

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._state == other._state

    def __hash__(self) -> int:
        return hash(frozenset(self._state.items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._state!r})"


@dataclass(frozen=True, slots=True)
class LWWLattice(Lattice):
    """Last-writer-wins register over opaque encoded bytes; a delete is a tombstone with value None.

    The highest (timestamp, writer, tombstone, value) wins. Timestamps are wall-clock nanoseconds
    (`time.time_ns`); the writer id breaks timestamp ties so that two writes in the same nanosecond resolve to
    the same winner on every replica. The last two fields only separate writes that share timestamp and
    writer (a writer reusing a timestamp), which must still resolve identically everywhere.
    """

    kind: ClassVar[str] = "lww"
    _wire_arity: ClassVar[int] = 4
    timestamp: int
    writer: str
    #: encoded bytes; or, for a large value, the same value in parts (``wire.frames.Frames``: ``parts``, its
    #: msgpack body then its buffers, each its own zmq frame on the wire and kept as received, uncopied)
    value: Any
    tombstone: bool = False

    def __post_init__(self) -> None:
        if type(self.timestamp) is not int or not isinstance(self.writer, str) or type(self.tombstone) is not bool:
            raise TypeError(f"LWW needs an int timestamp, str writer and bool tombstone, got {self!r:.120}")
        if self.tombstone and self.value is not None:
            raise ValueError("an LWW tombstone carries no value: pass value=None")
        if not self.tombstone and not isinstance(self.value, bytes) and not hasattr(self.value, "parts"):
            raise TypeError(f"an LWW value must be encoded bytes (or a tombstone), got {self.value!r:.80}")

    def _order(self) -> tuple[int, str, bool]:
        return (self.timestamp, self.writer, self.tombstone)

    def merge(self, other: LWWLattice) -> LWWLattice:
        self._check_mergeable(other)
        # Lattices are immutable, so handing back an operand is as good as a copy. The values are compared only
        # when all else ties (a write delivered twice): a value in parts is joined for it then, never otherwise.
        mine, theirs = self._order(), other._order()
        if mine != theirs:
            return self if mine > theirs else other
        return self if _value_key(self.value) >= _value_key(other.value) else other

    def __eq__(self, other: object) -> bool:
        return (type(other) is LWWLattice and self._order() == other._order()
                and (self.value is other.value or _value_key(self.value) == _value_key(other.value)))

    def __hash__(self) -> int:
        return hash((self.timestamp, self.writer, self.tombstone, len(self.value or b"")))

    def reveal(self) -> bytes | None:
        return self.value

    def to_wire(self) -> list:
        return [self.kind, self.timestamp, self.writer, self.value, self.tombstone]


def _value_key(value: Any) -> bytes:
    """An LWW value as the bytes it orders by: a value in parts joined (only for ties, see ``merge``)."""
    if value is None or type(value) is bytes:
        return value or b""
    return b"".join(memoryview(part) for part in value.parts)


def new_lww(value: bytes, writer: str, timestamp: int | None = None) -> LWWLattice:
    """A write stamped with the wall clock in ns (`time.time_ns`) unless `timestamp` is given."""
    return LWWLattice(time.time_ns() if timestamp is None else timestamp, writer, value)


def new_tombstone(writer: str, timestamp: int | None = None) -> LWWLattice:
    """A delete stamped like `new_lww`; it wins and loses by exactly the same order as a write."""
    return LWWLattice(time.time_ns() if timestamp is None else timestamp, writer, None, tombstone=True)


@dataclass(frozen=True, slots=True)
class SetLattice(Lattice):
    """Grow-only set of bytes / str / int elements; merge is union."""

    kind: ClassVar[str] = "set"
    items: frozenset = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", frozenset(self.items))
        for item in self.items:
            if not isinstance(item, (bytes, str, int)):
                raise TypeError(f"set lattice elements must be bytes, str or int, got {item!r:.80}")

    def merge(self, other: SetLattice) -> SetLattice:
        self._check_mergeable(other)
        return SetLattice(self.items | other.items)

    def reveal(self) -> frozenset:
        return self.items

    def to_wire(self) -> list:
        # Elements of different types do not compare, so order by type name first.
        return [self.kind, sorted(self.items, key=lambda item: (type(item).__name__, item))]

    @classmethod
    def _from_wire(cls, fields: list) -> SetLattice:
        return cls(frozenset(_expect(fields[0], list, "set items")))


@dataclass(frozen=True, slots=True)
class MaxLattice(Lattice):
    """A number that only grows; merge is max."""

    kind: ClassVar[str] = "max"
    value: int | float

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise TypeError(f"a max lattice holds an int or float, got {self.value!r:.80}")
        if isinstance(self.value, float) and math.isnan(self.value):
            raise ValueError("a max lattice cannot hold NaN: NaN has no place in the order")

    def merge(self, other: MaxLattice) -> MaxLattice:
        self._check_mergeable(other)
        return self if self.value >= other.value else other

    def reveal(self) -> int | float:
        return self.value

    def to_wire(self) -> list:
        return [self.kind, self.value]


class MapLattice(_DictBacked):
    """String keys to lattices; merge is key-wise, and a key present on one side only is kept."""

    kind: ClassVar[str] = "map"
    __slots__ = ()

    def __init__(self, entries: Mapping[str, Lattice] | None = None) -> None:
        self._state = dict(entries or {})
        for key, entry in self._state.items():
            if not isinstance(key, str) or not isinstance(entry, Lattice):
                raise TypeError(f"map entries must be str -> Lattice, got {key!r:.40} -> {entry!r:.40}")

    @property
    def entries(self) -> Mapping[str, Lattice]:
        return MappingProxyType(self._state)

    def merge(self, other: MapLattice) -> MapLattice:
        self._check_mergeable(other)
        merged = dict(self._state)
        for key, entry in other._state.items():
            merged[key] = merged[key].merge(entry) if key in merged else entry
        return MapLattice._of(merged)

    def reveal(self) -> dict[str, Any]:
        return {key: entry.reveal() for key, entry in self._state.items()}

    def to_wire(self) -> list:
        return [self.kind, {key: self._state[key].to_wire() for key in sorted(self._state)}]

    @classmethod
    def _from_wire(cls, fields: list) -> MapLattice:
        entries = _expect(fields[0], dict, "map entries")
        return cls({key: lattice_from_wire(entry) for key, entry in entries.items()})


class Ordering(enum.Enum):
    """How one vector clock relates to another: `a.compare(b) is BEFORE` means a <= b point-wise, a != b."""

    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


class VectorClock(_DictBacked):
    """Per-node event counters; merge is the point-wise max. A missing node counts as 0."""

    kind: ClassVar[str] = "vc"
    __slots__ = ()

    def __init__(self, clock: Mapping[str, int] | None = None) -> None:
        for node, count in (clock or {}).items():
            if not isinstance(node, str) or type(count) is not int or count < 0:
                raise TypeError(f"a vector clock maps str -> int >= 0, got {node!r:.40} -> {count!r:.40}")
        # Zero entries are dropped so that {a: 0} and {} are one clock (equal, same hash, same wire form).
        self._state = {node: count for node, count in (clock or {}).items() if count}

    @property
    def clock(self) -> Mapping[str, int]:
        return MappingProxyType(self._state)

    def compare(self, other: VectorClock) -> Ordering:
        nodes = self._state.keys() | other._state.keys()
        le = all(self._state.get(n, 0) <= other._state.get(n, 0) for n in nodes)
        ge = all(self._state.get(n, 0) >= other._state.get(n, 0) for n in nodes)
        if le and ge:
            return Ordering.EQUAL
        if le:
            return Ordering.BEFORE
        return Ordering.AFTER if ge else Ordering.CONCURRENT

    def dominates(self, other: VectorClock) -> bool:
        return self.compare(other) in (Ordering.AFTER, Ordering.EQUAL)

    def increment(self, node: str) -> VectorClock:
        return VectorClock({**self._state, node: self._state.get(node, 0) + 1})

    def merge(self, other: VectorClock) -> VectorClock:
        self._check_mergeable(other)
        merged = dict(self._state)
        for node, count in other._state.items():
            merged[node] = max(count, merged.get(node, 0))
        return VectorClock._of(merged)

    def reveal(self) -> dict[str, int]:
        return dict(self._state)

    def to_wire(self) -> list:
        return [self.kind, {node: self._state[node] for node in sorted(self._state)}]

    @classmethod
    def _from_wire(cls, fields: list) -> VectorClock:
        return cls(_expect(fields[0], dict, "a vector clock"))


class CausalLattice(_DictBacked):
    """Anna/Cloudburst's multi-key causal value: concurrent writes are kept, a causally later one replaces.

    The state is a set of versions, clock -> (values, dependencies), none of whose clocks is strictly
    dominated by another's. A single (point-wise max clock, dependencies, values) triple cannot work: with
    A and B concurrent, a write at exactly A v B beats (A, {x}) and (B, {y}) one at a time but only ties
    their merge, and a write after A yet concurrent with B drops x or keeps it depending on merge order -
    merge would not be associative. For single writes the rule is the usual one: a strictly later clock
    replaces the other wholesale, equal or concurrent clocks are both kept; `clock` is the point-wise max,
    `dependencies` the key-wise merge and `values` the union over the versions.
    """

    kind: ClassVar[str] = "causal"
    __slots__ = ()
    _state: dict[VectorClock, tuple[frozenset[bytes], MapLattice]]

    def __init__(self, clock: VectorClock, dependencies: Mapping[str, VectorClock], values: Iterable[bytes]) -> None:
        values = frozenset(values)
        deps = MapLattice(dependencies)
        if not isinstance(clock, VectorClock) or not all(isinstance(dep, VectorClock) for dep in deps._state.values()):
            raise TypeError(
                f"a causal value needs VectorClocks for clock and dependencies, got {clock!r:.40}, {deps!r:.80}"
            )
        if not all(isinstance(value, bytes) for value in values):
            raise TypeError(f"causal values must be encoded bytes, got {sorted(values, key=repr)!r:.80}")
        self._state = {clock: (values, deps)}

    @property
    def clock(self) -> VectorClock:
        return functools.reduce(VectorClock.merge, self._state)

    @property
    def dependencies(self) -> dict[str, VectorClock]:
        merged = functools.reduce(MapLattice.merge, (deps for _, deps in self._state.values()))
        return dict(merged.entries)

    @property
    def values(self) -> frozenset[bytes]:
        return frozenset().union(*(values for values, _ in self._state.values()))

    def merge(self, other: CausalLattice) -> CausalLattice:
        self._check_mergeable(other)
        combined = dict(self._state)
        for clock, (values, deps) in other._state.items():
            if clock in combined:
                old_values, old_deps = combined[clock]
                combined[clock] = (old_values | values, old_deps.merge(deps))
            else:
                combined[clock] = (values, deps)
        maximal = {
            clock: version
            for clock, version in combined.items()
            if not any(clock.compare(rival) is Ordering.BEFORE for rival in combined)
        }
        return CausalLattice._of(maximal)

    def reveal(self) -> list[bytes]:
        return sorted(self.values)

    def to_wire(self) -> list:
        versions = [
            [
                clock.to_wire()[1],
                sorted(values),
                {key: dep.to_wire()[1] for key, dep in sorted(deps.entries.items())},
            ]
            for clock, (values, deps) in self._state.items()
        ]
        return [self.kind, sorted(versions, key=lambda version: sorted(version[0].items()))]

    @classmethod
    def _from_wire(cls, fields: list) -> CausalLattice:
        versions = _expect(fields[0], list, "causal versions")
        if not versions:
            raise ValueError("a causal value has at least one version")
        lattices = []
        for version in versions:
            if not (isinstance(version, list) and len(version) == 3):
                raise TypeError(f"a causal version is [clock, values, dependencies], got {version!r:.80}")
            clock, values, deps = version
            deps = _expect(deps, dict, "causal dependencies")
            dep_clocks = {key: VectorClock._from_wire([dep]) for key, dep in deps.items()}
            lattices.append(cls(VectorClock._from_wire([clock]), dep_clocks, _expect(values, list, "values")))
        # Merging rather than trusting the sender keeps the no-dominated-version invariant for any input.
        return functools.reduce(CausalLattice.merge, lattices)


_KINDS: dict[str, type[Lattice]] = {
    cls.kind: cls for cls in (LWWLattice, SetLattice, MaxLattice, MapLattice, VectorClock, CausalLattice)
}


def _expect(obj: Any, kind: type, what: str) -> Any:
    if not isinstance(obj, kind):
        raise TypeError(f"{what} must be a {kind.__name__} on the wire, got {obj!r:.80}")
    return obj


def lattice_from_wire(obj: list) -> Lattice:
    """Rebuild a lattice from `Lattice.to_wire` output; accepts lists where tuples were (msgpack's doing)."""
    if not isinstance(obj, (list, tuple)) or not obj or not isinstance(obj[0], str):
        raise ValueError(f"a wire lattice is a list starting with its kind tag, got {obj!r:.80}")
    tag, fields = obj[0], list(obj[1:])
    cls = _KINDS.get(tag)
    if cls is None:
        raise ValueError(f"unknown lattice kind {tag!r:.40}: expected one of {sorted(_KINDS)}")
    if len(fields) != cls._wire_arity:
        raise ValueError(
            f"malformed {tag!r} lattice on the wire: expected {cls._wire_arity} field(s) after "
            f"the kind tag, got {len(fields)}"
        )
    try:
        return cls._from_wire(fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed {tag!r} lattice on the wire: {exc}") from exc
