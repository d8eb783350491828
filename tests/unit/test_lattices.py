"""Lattice laws (associative, commutative, idempotent merge), wire round trips, and merge rules by example."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cbctl.runtime.lattices import (
    CausalLattice,
    Lattice,
    LWWLattice,
    MapLattice,
    MaxLattice,
    Ordering,
    SetLattice,
    VectorClock,
    lattice_from_wire,
    new_lww,
    new_tombstone,
)

# Small domains on purpose: collisions (equal timestamps, clocks or keys) are where merges go wrong.
NODES = ["n1", "n2", "n3"]

vector_clocks = st.dictionaries(st.sampled_from(NODES), st.integers(0, 3)).map(VectorClock)


@st.composite
def lwws(draw: st.DrawFn) -> LWWLattice:
    timestamp, writer = draw(st.integers(0, 3)), draw(st.sampled_from(["w1", "w2"]))
    if draw(st.booleans()):
        return LWWLattice(timestamp, writer, None, tombstone=True)
    return LWWLattice(timestamp, writer, draw(st.sampled_from([b"", b"a", b"b"])))


set_elements = st.one_of(st.binary(max_size=2), st.text(max_size=2), st.integers(-3, 3))
sets = st.frozensets(set_elements).map(SetLattice)
maxes = st.one_of(st.integers(-5, 5), st.floats(allow_nan=False)).map(MaxLattice)
# Each key always holds the same kind: merging an LWW into a set under one key is a caller bug, not a law.
maps = st.fixed_dictionaries(
    {},
    optional={
        "lww": lwws(),
        "max": maxes,
        "set": sets,
        "vc": vector_clocks,
        "inner": st.fixed_dictionaries({}, optional={"x": lwws(), "y": maxes}).map(MapLattice),
    },
).map(MapLattice)
single_writes = st.builds(
    CausalLattice,
    vector_clocks,
    st.dictionaries(st.sampled_from(["k1", "k2"]), vector_clocks, max_size=2),
    st.frozensets(st.sampled_from([b"x", b"y", b"z"]), max_size=2),
)
# Arbitrary clocks (equal ones with different values, one equal to the max of two others) plus merged states.
causals = st.lists(single_writes, min_size=1, max_size=3).map(lambda ls: _merge_all(ls))

# No deadline: these run beside other suites on shared machines, and merge speed is not what they check.
LAWS = settings(deadline=None)
LATTICES = {"lww": lwws(), "set": sets, "max": maxes, "map": maps, "vc": vector_clocks, "causal": causals}


def _merge_all(lattices: list[Lattice]) -> Lattice:
    result = lattices[0]
    for lattice in lattices[1:]:
        result = result.merge(lattice)
    return result


@pytest.mark.parametrize("kind", sorted(LATTICES))
@LAWS
@given(data=st.data())
def test_merge_is_associative(kind: str, data: st.DataObject) -> None:
    a, b, c = (data.draw(LATTICES[kind]) for _ in range(3))
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@pytest.mark.parametrize("kind", sorted(LATTICES))
@LAWS
@given(data=st.data())
def test_merge_is_commutative(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(LATTICES[kind]), data.draw(LATTICES[kind])
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).to_wire() == b.merge(a).to_wire()


@pytest.mark.parametrize("kind", sorted(LATTICES))
@LAWS
@given(data=st.data())
def test_merge_is_idempotent(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(LATTICES[kind]), data.draw(LATTICES[kind])
    assert a.merge(a) == a
    assert a.merge(b).merge(b) == a.merge(b)


@pytest.mark.parametrize("kind", sorted(LATTICES))
@LAWS
@given(data=st.data())
def test_wire_round_trip_through_msgpack(kind: str, data: st.DataObject) -> None:
    lattice = data.draw(LATTICES[kind])
    wire = lattice.to_wire()
    assert wire[0] == lattice.kind == kind
    assert lattice_from_wire(wire) == lattice
    unpacked = msgpack.unpackb(msgpack.packb(wire), raw=False)
    assert lattice_from_wire(unpacked) == lattice
    assert hash(lattice_from_wire(unpacked)) == hash(lattice)


@pytest.mark.parametrize("kind", sorted(LATTICES))
@LAWS
@given(data=st.data())
def test_merge_leaves_operands_unchanged(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(LATTICES[kind]), data.draw(LATTICES[kind])
    wire_a, wire_b = a.to_wire(), b.to_wire()
    a.merge(b)
    assert (a.to_wire(), b.to_wire()) == (wire_a, wire_b)


# LWW


def test_lww_newer_timestamp_wins_either_way() -> None:
    old, new = LWWLattice(1, "w2", b"old"), LWWLattice(2, "w1", b"new")
    assert old.merge(new).reveal() == new.merge(old).reveal() == b"new"


def test_lww_timestamp_tie_is_broken_by_writer() -> None:
    a, b = LWWLattice(5, "alice", b"a"), LWWLattice(5, "bob", b"b")
    assert a.merge(b) == b.merge(a) == b


def test_lww_exact_tie_picks_the_same_winner_whatever_the_order() -> None:
    a, b, gone = LWWLattice(5, "w", b"a"), LWWLattice(5, "w", b"b"), LWWLattice(5, "w", None, tombstone=True)
    assert a.merge(b) == b.merge(a)
    assert a.merge(gone) == gone.merge(a)


def test_tombstone_beats_older_value_and_loses_to_newer() -> None:
    delete = new_tombstone("w1", timestamp=10)
    assert LWWLattice(9, "w1", b"v").merge(delete).reveal() is None
    assert delete.merge(LWWLattice(9, "w1", b"v")).tombstone
    assert delete.merge(LWWLattice(11, "w1", b"v")).reveal() == b"v"


def test_new_lww_uses_wall_clock_nanoseconds() -> None:
    write = new_lww(b"v", "w1")
    assert write.timestamp > 1_600_000_000 * 10**9
    assert new_lww(b"v", "w1", timestamp=7) == LWWLattice(7, "w1", b"v")


def test_lww_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError):
        LWWLattice(1, "w", b"v", tombstone=True)
    with pytest.raises(TypeError):
        LWWLattice(1, "w", None)
    with pytest.raises(TypeError):
        LWWLattice(1, "w", "text is not encoded bytes")  # type: ignore[arg-type]


# Sets, max, maps


def test_set_is_union_with_sorted_wire_form() -> None:
    merged = SetLattice(frozenset({b"b", 2})).merge(SetLattice(frozenset({b"a", "s"})))
    assert merged.reveal() == {b"a", b"b", 2, "s"}
    assert merged.to_wire() == ["set", [b"a", b"b", 2, "s"]]


def test_max_keeps_the_largest() -> None:
    assert MaxLattice(3).merge(MaxLattice(2.5)).reveal() == 3
    with pytest.raises(ValueError):
        MaxLattice(float("nan"))


def test_map_merges_key_wise_and_keeps_one_sided_keys() -> None:
    left = MapLattice({"a": MaxLattice(1), "b": SetLattice(frozenset({1}))})
    right = MapLattice({"a": MaxLattice(5), "c": LWWLattice(1, "w", b"c")})
    assert left.merge(right).reveal() == {"a": 5, "b": frozenset({1}), "c": b"c"}


def test_map_copies_its_entries() -> None:
    entries: dict[str, Lattice] = {"a": MaxLattice(1)}
    lattice = MapLattice(entries)
    entries["a"] = MaxLattice(9)
    assert lattice.reveal() == {"a": 1}
    with pytest.raises(TypeError):
        lattice.entries["a"] = MaxLattice(9)  # type: ignore[index]


def test_merging_different_kinds_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="kinds must match"):
        MaxLattice(1).merge(SetLattice(frozenset()))
    with pytest.raises(TypeError):
        MapLattice({"k": MaxLattice(1)}).merge(MapLattice({"k": LWWLattice(1, "w", b"")}))


# Vector clocks


@pytest.mark.parametrize(
    ("left", "right", "ordering"),
    [
        ({"a": 1}, {"a": 2}, Ordering.BEFORE),
        ({"a": 1, "b": 1}, {"a": 1}, Ordering.AFTER),
        ({"a": 1, "b": 0}, {"a": 1}, Ordering.EQUAL),
        ({"a": 1}, {"b": 1}, Ordering.CONCURRENT),
        ({}, {}, Ordering.EQUAL),
    ],
)
def test_vector_clock_compare(left: dict[str, int], right: dict[str, int], ordering: Ordering) -> None:
    assert VectorClock(left).compare(VectorClock(right)) is ordering
    assert VectorClock(left).dominates(VectorClock(right)) is (ordering in (Ordering.AFTER, Ordering.EQUAL))


def test_vector_clock_zero_entries_are_normalised_away() -> None:
    assert VectorClock({"a": 0}) == VectorClock({})
    assert hash(VectorClock({"a": 0, "b": 2})) == hash(VectorClock({"b": 2}))
    assert VectorClock({"a": 0}).to_wire() == ["vc", {}]


def test_vector_clock_increment_and_merge_return_new_clocks() -> None:
    clock = VectorClock({"a": 1})
    assert clock.increment("b") == VectorClock({"a": 1, "b": 1})
    assert clock.merge(VectorClock({"a": 0, "b": 3})).reveal() == {"a": 1, "b": 3}
    assert clock == VectorClock({"a": 1})


# Causal


def _write(clock: dict[str, int], *values: bytes, deps: dict | None = None) -> CausalLattice:
    return CausalLattice(VectorClock(clock), deps or {}, frozenset(values))


def test_causal_dominating_write_replaces_wholesale() -> None:
    old = _write({"a": 1}, b"old", deps={"k": VectorClock({"a": 5})})
    new = _write({"a": 2}, b"new", deps={"j": VectorClock({"b": 1})})
    for merged in (old.merge(new), new.merge(old)):
        assert merged.reveal() == [b"new"]
        assert merged.dependencies == {"j": VectorClock({"b": 1})}
        assert merged.clock == VectorClock({"a": 2})


def test_causal_concurrent_writes_are_both_kept() -> None:
    left = _write({"a": 1}, b"x", deps={"k": VectorClock({"a": 1}), "j": VectorClock({"c": 1})})
    right = _write({"b": 1}, b"y", deps={"k": VectorClock({"b": 2})})
    merged = left.merge(right)
    assert merged == right.merge(left)
    assert merged.reveal() == [b"x", b"y"]
    assert merged.clock == VectorClock({"a": 1, "b": 1})
    assert merged.dependencies == {"k": VectorClock({"a": 1, "b": 2}), "j": VectorClock({"c": 1})}


def test_causal_equal_clocks_union_values() -> None:
    assert _write({"a": 1}, b"x").merge(_write({"a": 1}, b"y")).reveal() == [b"x", b"y"]


def test_causal_write_at_the_max_of_two_concurrent_clocks_supersedes_both_in_any_order() -> None:
    # Breaks a single-clock representation: (x v y) v z would keep x and y, x v (y v z) would not.
    x, y, z = _write({"a": 1}, b"x"), _write({"b": 1}, b"y"), _write({"a": 1, "b": 1}, b"z")
    assert x.merge(y).merge(z) == x.merge(y.merge(z)) == x.merge(z).merge(y)
    assert x.merge(y).merge(z).reveal() == [b"z"]


def test_causal_later_write_drops_only_what_it_saw() -> None:
    x, y, x2 = _write({"a": 1}, b"x"), _write({"b": 1}, b"y"), _write({"a": 2}, b"x2")
    assert x.merge(y).merge(x2) == x.merge(x2).merge(y)
    assert x.merge(y).merge(x2).reveal() == [b"x2", b"y"]


# Wire errors


@pytest.mark.parametrize(
    "junk",
    [
        [],
        "lww",
        None,
        [42],
        ["nope", 1],
        ["lww", 1, "w"],
        ["lww", "1", "w", b"v", False],
        ["lww", 1, "w", None, False],
        ["set", "not a list"],
        ["set", [[1, 2]]],
        ["set", [1.5]],
        ["max", "3"],
        ["max", 1, 2],
        ["map", [["k", ["max", 1]]]],
        ["map", {"k": ["bogus", 1]}],
        ["map", {"k": 5}],
        ["vc", {"a": -1}],
        ["vc", {"a": "1"}],
        ["vc", [["a", 1]]],
        ["causal", []],
        ["causal", [[{"a": 1}, [b"x"]]]],
        ["causal", [[{"a": 1}, ["text"], {}]]],
        ["causal", [[{"a": 1}, [b"x"], {"k": 3}]]],
        ["causal", [[[1], [b"x"], {}]]],
    ],
)
def test_from_wire_rejects_junk_with_value_error(junk: object) -> None:
    with pytest.raises(ValueError):
        lattice_from_wire(junk)  # type: ignore[arg-type]


def test_from_wire_names_the_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown lattice kind 'nope'"):
        lattice_from_wire(["nope", 1])


def test_from_wire_accepts_tuples_and_normalises_dominated_causal_versions() -> None:
    assert lattice_from_wire(("max", 3)) == MaxLattice(3)
    wire = ["causal", [[{"a": 1}, [b"old"], {}], [{"a": 2}, [b"new"], {}]]]
    assert lattice_from_wire(wire) == _write({"a": 2}, b"new")
