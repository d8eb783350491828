"""The Lua merge (cbctl/runtime/redis_store/merge.lua) against a real redis-server: for every kind it gives the
bytes Python's merge gives, and is commutative, associative and idempotent; bad input is refused and nothing is
written. Random lattices come from hypothesis, with timestamps and numbers around 2**53, 2**63 and 2**64 - 1,
binary values with NUL and 0xff bytes, tombstones, non-ASCII writers and multi-version causal values."""

from __future__ import annotations

import itertools
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbctl.runtime.lattices import (
    CausalLattice,
    Lattice,
    LWWLattice,
    MaxLattice,
    SetLattice,
    VectorClock,
    lattice_from_wire,
)
from tests.redis_servers import RedisServer, require_redis

EXAMPLES = 250  # per kind; each example is ~10 round trips to the server

BIG = [0, 1, 2**31 - 1, 2**32, 2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1,
       1796131246756123457, 1796131246756123458, -1, -32, -33, -128, -129, -(2**31), -(2**53) - 1, -(2**63)]
ints = st.one_of(st.sampled_from(BIG), st.integers(-(2**63), 2**64 - 1), st.integers(-3, 3))
writers = st.one_of(st.sampled_from(["a", "b", "é", "executor-1", "w\x00"]),
                    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8))
values = st.one_of(st.sampled_from([b"", b"\x00", b"\xff", b"a", b"a\x00", b"\x00\xff" * 40]), st.binary(max_size=300))


@st.composite
def lww(draw) -> LWWLattice:
    ts, writer = draw(ints), draw(writers)
    if draw(st.integers(0, 4)) == 0:
        return LWWLattice(ts, writer, None, tombstone=True)
    return LWWLattice(ts, writer, draw(values))


floats = st.one_of(st.floats(allow_nan=False), st.sampled_from([float(2**53), float(2**63), float(2**64), 0.5, -0.0,
                                                                 float("inf"), float("-inf"), 1.0, -1.0]))
maxes = st.one_of(ints, floats).map(MaxLattice)

nodes = st.sampled_from(["a", "b", "c", "é"])
clocks = st.dictionaries(nodes, st.one_of(st.integers(0, 3), st.sampled_from([2**53 + 1, 2**64 - 1])), max_size=3)


@st.composite
def causal(draw) -> CausalLattice:
    versions = [
        CausalLattice(VectorClock(draw(clocks)),
                      {k: VectorClock(c) for k, c in draw(st.dictionaries(st.sampled_from(["x", "y", "ü"]), clocks,
                                                                           max_size=2)).items()},
                      draw(st.lists(values, max_size=3)))
        for _ in range(draw(st.integers(1, 3)))
    ]
    merged = versions[0]
    for version in versions[1:]:
        merged = merged.merge(version)
    return merged


elements = st.one_of(st.binary(max_size=8), st.text(max_size=4), ints, st.sampled_from([b"", "", 0, b"\x00"]))
sets = st.frozensets(elements, min_size=1, max_size=6).map(SetLattice)


@pytest.fixture(scope="module")
def redis_client(tmp_path_factory):
    require_redis()
    import redis

    from cbctl.runtime.redis_store.merge import Merger

    server = RedisServer(tmp_path_factory.mktemp("redis-merge")).start()
    try:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        yield client, Merger(client)
        client.close()
    finally:
        server.stop()


_keys = itertools.count()


def _fresh() -> str:
    return f"t/{next(_keys)}"


def _put(merger, key: str, lattice: Lattice) -> int:
    return merger(key, msgpack.packb(lattice.to_wire()))


def _stored(client, key: str) -> bytes:
    """The key's value as msgpack of to_wire(): a native set is rebuilt from its members."""
    if client.type(key) == b"set":
        return msgpack.packb(SetLattice(frozenset(msgpack.unpackb(m) for m in client.smembers(key))).to_wire())
    return client.get(key)


def _merge_in_redis(client, merger, *lattices: Lattice) -> tuple[str, bytes]:
    key = _fresh()
    for lattice in lattices:
        _put(merger, key, lattice)
    return key, _stored(client, key)


def _check_laws(redis_client, x: Lattice, y: Lattice, z: Lattice, exact_commutative: bool = True) -> None:
    client, merger = redis_client
    # same bytes as Python's merge, after every step (the store merges incoming into current)
    key = _fresh()
    expected: Lattice | None = None
    for lattice in (x, y, z):
        _put(merger, key, lattice)
        expected = lattice_from_wire(lattice.to_wire()) if expected is None else expected.merge(lattice)
        assert _stored(client, key) == msgpack.packb(expected.to_wire())
    xyz = _stored(client, key)
    # idempotent: x (already in) again changes nothing and reports a no-op
    assert _put(merger, key, x) == 0
    assert _stored(client, key) == xyz
    # commutative
    _, xy = _merge_in_redis(client, merger, x, y)
    _, yx = _merge_in_redis(client, merger, y, x)
    if exact_commutative:
        assert xy == yx
    else:  # max: 1 and 1.0 are equal, and each side keeps its own bytes, as in Python
        assert lattice_from_wire(msgpack.unpackb(xy)) == lattice_from_wire(msgpack.unpackb(yx))
    # associative: x then (y ⊔ z, merged in Redis), against (x ⊔ y) ⊔ z
    _, yz = _merge_in_redis(client, merger, y, z)
    key = _fresh()
    _put(merger, key, x)
    merger(key, yz) if client.type(key) != b"set" else _put(merger, key, lattice_from_wire(msgpack.unpackb(yz)))
    assert lattice_from_wire(msgpack.unpackb(_stored(client, key))) == lattice_from_wire(msgpack.unpackb(xyz))
    if exact_commutative:
        assert _stored(client, key) == xyz


_settings = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                   HealthCheck.too_slow])


@_settings
@given(lww(), lww(), lww())
def test_lww_merge_matches_python(redis_client, x, y, z):
    _check_laws(redis_client, x, y, z)


def _tied(ts: int):
    one = st.builds(LWWLattice, st.just(ts), st.sampled_from(["a", "b"]), st.sampled_from([b"", b"x", b"y"]))
    return st.tuples(one, one, one)


@_settings
@given(st.sampled_from(BIG).flatmap(_tied))
def test_lww_ties_on_timestamp_and_writer(redis_client, xyz):
    _check_laws(redis_client, *xyz)


@_settings
@given(maxes, maxes, maxes)
def test_max_merge_matches_python(redis_client, x, y, z):
    _check_laws(redis_client, x, y, z, exact_commutative=False)


@_settings
@given(causal(), causal(), causal())
def test_causal_merge_matches_python(redis_client, x, y, z):
    _check_laws(redis_client, x, y, z)


@_settings
@given(sets, sets, sets)
def test_set_merge_matches_python(redis_client, x, y, z):
    _check_laws(redis_client, x, y, z)


def test_adjacent_nanoseconds_above_2_53_order_exactly(redis_client):
    client, merger = redis_client
    key = _fresh()
    later = LWWLattice(1796131246756123458, "a", b"later")
    assert _put(merger, key, later) == 1
    assert _put(merger, key, LWWLattice(1796131246756123457, "z", b"earlier")) == 0
    assert client.get(key) == msgpack.packb(later.to_wire())


@pytest.mark.parametrize("stored, incoming, message", [
    (LWWLattice(1, "a", b"v"), SetLattice({1}), "cannot merge a 'set' lattice with a 'lww' one"),
    (SetLattice({1}), LWWLattice(1, "a", b"v"), "cannot merge a 'lww' lattice with a 'set' one"),
    (MaxLattice(1), LWWLattice(1, "a", b"v"), "cannot merge a 'lww' lattice with a 'max' one"),
])
def test_kind_mismatch_is_refused_and_nothing_changes(redis_client, stored, incoming, message):
    import redis

    client, merger = redis_client
    key = _fresh()
    _put(merger, key, stored)
    before = _stored(client, key)
    with pytest.raises(redis.ResponseError, match=message):
        _put(merger, key, incoming)
    assert _stored(client, key) == before


@pytest.mark.parametrize("packed, message", [
    (msgpack.packb(["lww", 1, "a", b"v"]), "expected 4 field"),
    (msgpack.packb(["lww", 1.5, "a", b"v", False]), "int timestamp"),
    (msgpack.packb(["lww", 1, "a", "text", False]), "encoded bytes"),
    (msgpack.packb(["lww", 1, "a", b"v", True]), "tombstone carries no value"),
    (msgpack.packb(["max", True]), "int or float"),
    (msgpack.packb(["max", float("nan")]), "NaN"),
    (msgpack.packb(["map", {}]), "not stored in Redis"),
    (msgpack.packb(["causal", []]), "at least one version"),
    (msgpack.packb(["causal", [[{"a": -1}, [], {}]]]), "int >= 0"),
    (msgpack.packb(["set", [True]]), "bytes, str or int"),
    (b"\x95\xa3lww\x01", "truncated"),
    (msgpack.packb(["lww", 1, "a", b"v", False]) + b"\x00", "trailing bytes"),
    (b"\xc1", "not part of a lattice"),
])
def test_bad_input_is_refused_and_nothing_is_written(redis_client, packed, message):
    import redis

    client, merger = redis_client
    key = _fresh()
    with pytest.raises(redis.ResponseError, match=message):
        merger(key, packed)
    assert not client.exists(key)


def _server_usec(client, command: str) -> float:
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return stats.get("usec", 0)


def test_worst_case_merge_time(redis_client, capsys):
    """What one merge costs the Redis node (which runs nothing else meanwhile), at the sizes cbctl allows to
    reach the script. Printed with -s; the bounds are loose (shared CI machines), the README quotes numbers."""
    client, merger = redis_client
    rows = []

    def timed(label: str, key: str, lattice: Lattice, repeat: int = 5) -> float:
        packed = msgpack.packb(lattice.to_wire())
        before = _server_usec(client, "evalsha")
        started = time.perf_counter()
        for _ in range(repeat):
            merger(key, packed)
        wall = (time.perf_counter() - started) / repeat * 1e6
        server = (_server_usec(client, "evalsha") - before) / repeat
        rows.append((label, server, wall))
        return server

    key = _fresh()
    _put(merger, key, LWWLattice(2, "w", b"x" * 100))
    timed("lww 100 B (loses)", key, LWWLattice(1, "w", b"y" * 100), repeat=200)
    for size in (1 << 20, 16 << 20):
        key = _fresh()
        _put(merger, key, LWWLattice(1, "w", b"x"))
        timed(f"lww {size >> 20} MiB (wins: stored, published)", key, LWWLattice(2, "w", b"y" * size), repeat=1)
    big = b"\x00" * (16 << 20)
    key = _fresh()
    _put(merger, key, LWWLattice(2, "w", big + b"\x01"))
    lww_big = timed("lww 16 MiB, same ts+writer (value compare)", key, LWWLattice(2, "w", big + b"\x00"))
    key = _fresh()
    _put(merger, key, MaxLattice(1))
    timed("max", key, MaxLattice(0.5), repeat=200)
    for versions in (3, 30, 100):
        key = _fresh()
        concurrent = CausalLattice(VectorClock({"n0": 1}), {"d": VectorClock({"n0": 1})}, [b"v" * 100])
        for i in range(1, versions):
            concurrent = concurrent.merge(CausalLattice(VectorClock({f"n{i}": 1}), {"d": VectorClock({f"n{i}": 1})},
                                                        [b"v" * 100]))
        _put(merger, key, concurrent)
        timed(f"causal, {versions} concurrent versions + 1", key,
              CausalLattice(VectorClock({"new": 1}), {}, [b"w"]), repeat=3)
    key = _fresh()
    _put(merger, key, SetLattice(frozenset(range(10_000))))
    timed("set of 10,000 + 1 element (SADD)", key, SetLattice({10_001}), repeat=50)
    with capsys.disabled():
        print("\nmerge cost: server us/call (INFO commandstats), client round trip us")
        for label, server, wall in rows:
            print(f"  {label:48s} {server:10.1f} {wall:10.1f}")
    assert lww_big < 2_000_000  # a 16 MiB compare must stay well under the 5 s busy-script limit
