"""The executor cache's pure bookkeeping: LRU order, the byte bound, pushes, cached absence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cbctl.errors import InvalidArgument
from cbctl.runtime.executor.cache import ENTRY_OVERHEAD_BYTES, ExecutorCache, lattice_size
from cbctl.runtime.lattices import CausalLattice, LWWLattice, MaxLattice, VectorClock


def lww(ts: int, value: bytes = b"v", writer: str = "w") -> LWWLattice:
    return LWWLattice(ts, writer, value)


def cost(key: str, lattice) -> int:
    return lattice_size(lattice) + len(key) + ENTRY_OVERHEAD_BYTES


def test_sizes_grow_with_the_value_and_absence_costs_only_the_entry():
    assert lattice_size(lww(1, b"x" * 1000)) - lattice_size(lww(1, b"")) == 1000
    assert lattice_size(None) == 0
    causal = CausalLattice(VectorClock({"a": 1}), {"dep": VectorClock({"b": 2})}, [b"x" * 500])
    assert lattice_size(causal) >= 500
    assert lattice_size(MaxLattice(3)) > 0


def test_a_hit_returns_the_entry_and_a_miss_none():
    cache = ExecutorCache(10_000)
    assert cache.get("k") is None
    assert cache.insert("k", lww(1)) == []
    entry = cache.get("k")
    assert entry is not None and entry.lattice == lww(1)
    assert "k" in cache and len(cache) == 1


def test_eviction_takes_the_least_recently_used_and_keeps_the_bound():
    one = cost("k0", lww(1, b"x" * 100))
    cache = ExecutorCache(3 * one)
    for i in range(3):
        assert cache.insert(f"k{i}", lww(1, b"x" * 100)) == []
    cache.get("k0")  # k1 is now the least recently used
    assert cache.insert("k3", lww(1, b"x" * 100)) == ["k1"]
    assert cache.recent_keys() == ["k3", "k0", "k2"]
    assert cache.bytes <= cache.capacity_bytes and cache.evictions == 1


def test_an_entry_larger_than_the_whole_cache_is_not_kept():
    cache = ExecutorCache(1000)
    cache.insert("small", lww(1))
    assert cache.insert("huge", lww(1, b"x" * 5000)) == ["small", "huge"]
    assert len(cache) == 0 and cache.bytes == 0


def test_insert_merges_with_what_is_held():
    cache = ExecutorCache(10_000)
    cache.insert("k", lww(5, b"new"))
    cache.insert("k", lww(3, b"old"))  # an older write never replaces a newer one
    assert cache.get("k").lattice == lww(5, b"new")


def test_a_push_updates_a_held_key_without_making_it_recent_and_ignores_others():
    cache = ExecutorCache(10_000)
    cache.insert("a", lww(1))
    cache.insert("b", lww(1))
    assert cache.update("a", lww(2, b"pushed")) == (True, [])
    assert cache.recent_keys() == ["b", "a"]  # a push is not a use
    assert cache.get("a").lattice == lww(2, b"pushed")
    assert cache.update("absent", lww(9)) == (False, [])
    assert "absent" not in cache


def test_a_push_that_grows_a_value_past_the_bound_evicts():
    cache = ExecutorCache(cost("a", lww(1, b"x" * 100)) * 2)
    cache.insert("a", lww(1, b"x" * 100))
    cache.insert("b", lww(1, b"x" * 100))
    held, evicted = cache.update("b", lww(2, b"x" * 300))
    assert held and evicted == ["a"] and cache.bytes <= cache.capacity_bytes


def test_absence_is_cached_and_replaced_by_a_value():
    cache = ExecutorCache(10_000)
    cache.insert("k", None)
    assert cache.get("k") is not None and cache.get("k").lattice is None
    cache.update("k", lww(1))
    assert cache.get("k").lattice == lww(1)
    cache.insert("k", None)  # a late "no value" answer never hides a value
    assert cache.get("k").lattice == lww(1)


def test_a_key_that_changed_kind_takes_the_new_value():
    cache = ExecutorCache(10_000)
    cache.insert("k", lww(1))
    causal = CausalLattice(VectorClock({"e": 1}), {}, [b"v"])
    cache.insert("k", causal)
    assert cache.get("k").lattice == causal


def test_discard_and_keys_limit():
    cache = ExecutorCache(10_000)
    for i in range(5):
        cache.insert(f"k{i}", lww(1))
    assert cache.recent_keys(limit=2) == ["k4", "k3"]
    before = cache.bytes
    cache.discard("k4")
    cache.discard("missing")
    assert "k4" not in cache and cache.bytes < before


def test_a_negative_capacity_is_refused():
    with pytest.raises(InvalidArgument, match="negative"):
        ExecutorCache(-1)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=5000),
       st.lists(st.tuples(st.sampled_from(["get", "insert", "update", "discard"]),
                          st.integers(min_value=0, max_value=9), st.integers(min_value=0, max_value=2000),
                          st.integers(min_value=1, max_value=50)), max_size=60))
def test_bytes_always_match_the_entries_and_stay_within_the_bound(capacity, operations):
    cache = ExecutorCache(capacity)
    for op, key_index, size, ts in operations:
        key = f"key-{key_index}"
        if op == "get":
            cache.get(key)
        elif op == "insert":
            cache.insert(key, lww(ts, b"x" * size))
        elif op == "update":
            cache.update(key, lww(ts, b"x" * size))
        else:
            cache.discard(key)
        assert cache.bytes <= capacity
        assert cache.bytes == sum(cache.get(k).size for k in cache.recent_keys())
