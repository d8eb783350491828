"""Hostile frames against the one place frames are trusted: ``unpack`` raises only ``ProtocolError``, and what it
does accept has fields of the declared types; the store node, driven directly, answers every accepted request
and keeps serving (its log replays afterwards)."""

from __future__ import annotations

import typing
from pathlib import Path

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cbctl.errors import ProtocolError
from cbctl.runtime.defaults import PROTOCOL_VERSION
from cbctl.runtime.store.embedded import EmbeddedBackend
from cbctl.runtime.store.node import StoreNode
from cbctl.runtime.wire.messages import (
    CallRequest,
    DagTrigger,
    ExecutorStatus,
    GetRequest,
    Message,
    PutRequest,
    StoreStatsRequest,
    unpack,
)
from tests.fuzz_frames import deep, hostile_frames, pack_array, seed_frames

SEEDS = seed_frames({"PutRequest": {"key": "fuzz/k", "lattice": ["lww", 1, "w", b"v", False]}})


def _has_type(value: typing.Any, annotation: typing.Any) -> bool:
    if annotation is typing.Any:
        return True
    if annotation is float:
        return type(value) in (float, int)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return type(value) is list and all(_has_type(v, args[0]) for v in value)
    if origin is dict:
        return type(value) is dict and all(_has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items())
    if origin is not None:  # X | None
        return value is None or _has_type(value, next(a for a in args if a is not type(None)))
    return type(value) is annotation


def _accepted(frame: bytes) -> Message | None:
    try:
        return unpack(frame)
    except ProtocolError:
        return None


@settings(max_examples=300, deadline=None)
@given(hostile_frames(SEEDS))
# regressions: ill-typed fields of well-formed frames used to reach the handlers (a str for a trigger's schedule,
# an int for a key list, a bool where an int belongs), nesting past msgpack's own limit
@example(msgpack.packb([PROTOCOL_VERSION, DagTrigger.KIND, "c", "d", "f", "not a dict", {}, [], "", b"", "", False,
                        "lww", {}]))
@example(msgpack.packb([PROTOCOL_VERSION, GetRequest.KIND, 1, 5]))
@example(msgpack.packb([PROTOCOL_VERSION, CallRequest.KIND, *[5] * len(CallRequest._FIELDS)]))
@example(msgpack.packb([PROTOCOL_VERSION, ExecutorStatus.KIND, "e", "a", "cpu", True, [], "busy", 0, [], 1, {}]))
@example(msgpack.packb([PROTOCOL_VERSION, StoreStatsRequest.KIND, True]))
@example(pack_array([msgpack.packb(PROTOCOL_VERSION), msgpack.packb(GetRequest.KIND), msgpack.packb(1),
                     deep(5000)]))
def test_unpack_raises_only_protocol_error_and_accepts_only_declared_types(frame):
    message = _accepted(frame)
    if message is not None:
        hints = typing.get_type_hints(type(message))
        for name in message._FIELDS:
            assert _has_type(getattr(message, name), hints[name]), (name, getattr(message, name))


def test_a_field_of_the_wrong_type_is_named_in_the_error():
    with pytest.raises(ProtocolError, match=r"GetRequest.keys is a int, not list\[str\]"):
        unpack(msgpack.packb([PROTOCOL_VERSION, GetRequest.KIND, 1, 5]))
    with pytest.raises(ProtocolError, match=r"PutRequest.key is a bytes, not str"):
        unpack(msgpack.packb([PROTOCOL_VERSION, PutRequest.KIND, 1, b"k", []]))


@settings(max_examples=60, deadline=None)
@given(st.lists(hostile_frames(SEEDS), min_size=1, max_size=20))
def test_store_node_answers_every_accepted_request_and_its_log_replays(tmp_path_factory, frames):
    data_dir: Path = tmp_path_factory.mktemp("fuzzstore") / "data"
    node = StoreNode(EmbeddedBackend(data_dir))
    try:
        requests = [m for m in map(_accepted, frames) if m is not None]
        replies, _pushes = node.handle_batch(requests)
        assert len(replies) == len(requests)
        for reply in replies:
            unpack(reply.pack())  # every reply is itself a valid frame
        keys = sorted(node.backend.data)
    finally:
        node.close()
    recovered = StoreNode(EmbeddedBackend(data_dir))
    try:
        assert sorted(recovered.backend.data) == keys
    finally:
        recovered.close()
