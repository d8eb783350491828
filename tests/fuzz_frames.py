"""Hypothesis strategies for hostile frames: random bytes, random msgpack values, and mutations of valid frames
of every message kind (wrong version or kind, a field of another type, huge and negative ints, deep nesting,
truncation, byte flips, extra and missing fields). Used by the unit test of ``unpack`` and by the fuzz test that
sends them to every server socket of a real cluster.
"""

from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any

import msgpack
from hypothesis import strategies as st

from cbctl.runtime.defaults import PROTOCOL_VERSION
from cbctl.runtime.wire.messages import Message, all_kinds

# Leaf values of every msgpack type, with the edges of each: the ints a 64-bit field cannot hold are left out
# (msgpack refuses to pack them), but its extremes are in.
LEAVES = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**31, -(2**31)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.binary(max_size=40),
)
MSGPACK_VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=6)),
    max_leaves=20,
)


def deep(depth: int) -> bytes:
    """A packed list nested ``depth`` deep, built as bytes because msgpack refuses to pack past its own limit
    (and past its unpacking limit the frame must be refused, not crash the reader)."""
    return b"\x91" * depth + b"\xc0"


def pack_array(packed_items: list[bytes]) -> bytes:
    """A msgpack array of already packed items."""
    n = len(packed_items)
    header = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return header + b"".join(packed_items)


# Annotation -> a plausible value, so every seed is a valid frame that reaches the handler when unmutated.
_PLAIN = {int: 7, str: "fuzz", bytes: msgpack.packb([1]), bool: False, float: 0.5}


def _plausible(annotation: Any) -> Any:
    if annotation is Any:
        return {}
    if annotation in _PLAIN:
        return _PLAIN[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return [_plausible(args[0])]
    if origin is dict:
        return {"fuzz": _plausible(args[1])}
    return None  # an optional field


def seed_frames(overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, list[Any]]:
    """A decoded valid frame (``[version, kind, *fields]``) of every kind, by class name; ``overrides`` sets
    fields per class (real names and addresses, so mutated frames reach deep into the handlers)."""
    seeds = {}
    for kind, cls in sorted(all_kinds().items()):
        hints = typing.get_type_hints(cls)
        values = {f.name: _plausible(hints[f.name]) for f in fields(cls)}
        values.update((overrides or {}).get(cls.__name__, {}))
        seeds[cls.__name__] = [PROTOCOL_VERSION, kind, *values.values()]
    return seeds


def _other_type(value: Any) -> st.SearchStrategy[Any]:
    """Any msgpack value whose type differs from ``value``'s (int and float count as one for floats)."""
    return MSGPACK_VALUES.filter(lambda v: type(v) is not type(value))


@st.composite
def mutated(draw: st.DrawFn, seed: list[Any]) -> bytes:
    """One mutation of ``seed`` (a decoded valid frame), packed; some mutations work on the packed bytes."""
    frame = list(seed)
    how = draw(st.sampled_from(["version", "kind", "field_type", "field_int", "deep", "truncate", "flip",
                                "extra", "missing", "not_a_list"]))
    positions = range(2, len(frame))
    nested: tuple[int, bytes] | None = None  # (position, packed deep value)
    if how == "version":
        frame[0] = draw(MSGPACK_VALUES.filter(lambda v: v != PROTOCOL_VERSION))
    elif how == "kind":
        frame[1] = draw(st.one_of(st.integers(-(2**63), 2**63 - 1), MSGPACK_VALUES))
    elif how == "field_type" and positions:
        i = draw(st.sampled_from(positions))
        frame[i] = draw(_other_type(frame[i]))
    elif how == "field_int" and positions:
        frame[draw(st.sampled_from(positions))] = draw(st.sampled_from([2**64 - 1, -(2**63), -1, 2**63 - 1]))
    elif how == "deep" and positions:
        nested = (draw(st.sampled_from(positions)), deep(draw(st.sampled_from([50, 500, 5000]))))
    elif how == "extra":
        frame.extend(draw(st.lists(MSGPACK_VALUES, min_size=1, max_size=3)))
    elif how == "missing" and len(frame) > 2:
        del frame[draw(st.integers(2, len(frame) - 1)):]
    elif how == "not_a_list":
        frame = {"version": frame[0], "kind": frame[1], "fields": frame[2:]}
    if nested is not None:
        items = [msgpack.packb(v) for v in frame]
        items[nested[0]] = nested[1]
        packed = pack_array(items)
    else:
        packed = msgpack.packb(frame)
    if how == "truncate":
        packed = packed[: draw(st.integers(0, max(0, len(packed) - 1)))]
    elif how == "flip":
        data = bytearray(packed)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        packed = bytes(data)
    return packed


_TYPED = {int: st.integers(-(2**63), 2**63 - 1), str: st.text(max_size=20), bytes: st.binary(max_size=40),
          bool: st.booleans(), float: st.floats()}


def _of_type(annotation: Any) -> st.SearchStrategy[Any]:
    if annotation is Any:
        return MSGPACK_VALUES
    if annotation in _TYPED:
        return _TYPED[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return st.lists(_of_type(args[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(_of_type(args[0]), _of_type(args[1]), max_size=4)
    inner = next(a for a in args if a is not type(None))  # X | None
    return st.one_of(st.none(), _of_type(inner))


@st.composite
def well_typed(draw: st.DrawFn, seed: list[Any]) -> bytes:
    """A frame of ``seed``'s kind whose fields are random values of their declared types, some kept from the
    seed: it passes ``unpack`` and tests what the handlers make of hostile values."""
    cls = all_kinds()[seed[1]]
    hints = typing.get_type_hints(cls)
    frame = list(seed)
    for i, f in enumerate(fields(cls)):
        if draw(st.booleans()):
            frame[i + 2] = draw(_of_type(hints[f.name]))
    return msgpack.packb(frame)


def hostile_frames(seeds: dict[str, list[Any]]) -> st.SearchStrategy[bytes]:
    """Random bytes, random msgpack values, a mutation of one of ``seeds``, or a well-typed frame of its kind
    with hostile values."""
    names = st.sampled_from(sorted(seeds))
    return st.one_of(
        st.binary(max_size=300),
        MSGPACK_VALUES.map(msgpack.packb),
        st.lists(MSGPACK_VALUES, max_size=6).map(lambda v: msgpack.packb([PROTOCOL_VERSION, *v])),
        names.flatmap(lambda name: mutated(seeds[name])),
        names.flatmap(lambda name: well_typed(seeds[name])),
    )


def is_message(frame: bytes) -> type[Message] | None:
    """The kind a frame would unpack to, or None (for tests that must tell accepted mutations apart)."""
    from cbctl.errors import ProtocolError
    from cbctl.runtime.wire.messages import unpack

    try:
        return type(unpack(frame))
    except ProtocolError:
        return None
