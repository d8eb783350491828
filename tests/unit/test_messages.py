"""Wire format: every message kind survives pack/unpack, and every malformed frame is one ProtocolError."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import msgpack
import pytest

from cbctl.errors import ProtocolError
from cbctl.runtime.defaults import PROTOCOL_VERSION
from cbctl.runtime.wire import messages
from cbctl.runtime.wire.messages import GetRequest, Message, all_kinds, unpack

# Values per field annotation (messages.py uses postponed annotations, so these are the source strings).
# Each is non-default and non-empty, so a field dropped or swapped on the way shows up as a difference.
SAMPLES: dict[str, Any] = {
    "int": 123_456_789_012,
    "str": "naïve-ключ/✓",
    "bool": True,
    "float": 0.625,
    "bytes": b"\x00\xff\x80binary",
    "Any": {"nested": [1, 2.5, None, "x", b"y"], "flag": False},
    "list[str]": ["a", "b/c", ""],
    "list[Any]": ["lww", 17, "writer", b"value", False],
    "list[list[str]]": [["f", "g"], ["g", "h"]],
    "dict[str, Any]": {"gpu": False, "batch": 8, "args": [1, "two"], "nested": {"k": None}},
    "dict[str, str]": {"f": "ipc:///tmp/x", "g": "tcp://127.0.0.1:5555"},
    "dict[str, int]": {"f": 1, "g": 2},
    "dict[str, bytes]": {"f": b"\x01", "g": b""},
}


def sample_value(annotation: str, where: str) -> Any:
    """A representative value for a field annotation; containers and optionals are built from their parts,
    so kinds added later need no edit here unless they use a new leaf type."""
    annotation = annotation.replace(" ", "")
    if annotation.replace(",", ", ") in SAMPLES:
        return SAMPLES[annotation.replace(",", ", ")]
    if annotation.endswith("|None"):
        return sample_value(annotation[: -len("|None")], where)
    if annotation.startswith("list[") and annotation.endswith("]"):
        return [sample_value(annotation[5:-1], where)]
    if annotation.startswith("dict[str,") and annotation.endswith("]"):
        return {"key": sample_value(annotation[9:-1], where)}
    raise AssertionError(f"{where}: no sample for type {annotation!r}; add one to SAMPLES")


def sample_message(cls: type[Message]) -> Message:
    values = []
    for f in fields(cls):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        values.append(sample_value(annotation, f"{cls.__name__}.{f.name}"))
    return cls(*values)


KINDS = sorted(all_kinds().items())


def test_registry_is_complete_and_consistent():
    assert len(KINDS) >= 20
    exported = {obj for obj in vars(messages).values() if isinstance(obj, type) and issubclass(obj, Message)}
    exported.discard(Message)
    assert exported == {cls for _, cls in KINDS}, "a Message subclass is not registered with @message"
    for kind, cls in KINDS:
        assert kind == cls.KIND
        assert tuple(f.name for f in fields(cls)) == cls._FIELDS


@pytest.mark.parametrize(("kind", "cls"), KINDS, ids=[cls.__name__ for _, cls in KINDS])
def test_round_trip_every_kind(kind, cls):
    original = sample_message(cls)
    frame = original.pack()
    assert isinstance(frame, bytes)
    decoded = unpack(frame)
    assert type(decoded) is cls
    assert decoded == original
    raw = msgpack.unpackb(frame, raw=False)
    assert raw[:2] == [PROTOCOL_VERSION, kind]
    assert len(raw) == 2 + len(cls._FIELDS)


def test_trailing_fields_with_defaults_may_be_omitted():
    # A frame with only the required fields is accepted and gets the declared defaults.
    frame = msgpack.packb([PROTOCOL_VERSION, messages.ControlResponse.KIND, 7, True])
    decoded = unpack(frame)
    assert decoded == messages.ControlResponse(7, True)
    assert decoded.payload is None and decoded.error_type == ""


def test_empty_containers_round_trip():
    original = GetRequest(0, [])
    assert unpack(original.pack()) == original


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"\x92\x01", b"\x01\x02", bytes(range(256))],
                         ids=["empty", "reserved-byte", "truncated-array", "trailing-data", "random"])
def test_non_msgpack_is_protocol_error(frame):
    with pytest.raises(ProtocolError, match="not msgpack"):
        unpack(frame)


def test_wrong_version_is_protocol_error():
    frame = msgpack.packb([PROTOCOL_VERSION + 1, GetRequest.KIND, 1, ["k"]])
    with pytest.raises(ProtocolError, match="protocol version"):
        unpack(frame)


@pytest.mark.parametrize("kind", [9999, -1, "10", None, 10.0])
def test_unknown_kind_is_protocol_error(kind):
    frame = msgpack.packb([PROTOCOL_VERSION, kind, 1, ["k"]])
    with pytest.raises(ProtocolError, match="unknown message kind"):
        unpack(frame)


@pytest.mark.parametrize("extra", [[], [1], [1, ["k"], "surplus"]], ids=["none", "too-few", "too-many"])
def test_wrong_field_count_is_protocol_error(extra):
    frame = msgpack.packb([PROTOCOL_VERSION, GetRequest.KIND, *extra])
    with pytest.raises(ProtocolError, match="GetRequest frame has"):
        unpack(frame)


@pytest.mark.parametrize("payload", [{"v": 1, "kind": 10}, 42, "text", b"bytes", None, [PROTOCOL_VERSION]],
                         ids=["map", "int", "str", "bin", "nil", "one-element"])
def test_not_a_list_is_protocol_error(payload):
    with pytest.raises(ProtocolError, match=r"not a \[version, kind"):
        unpack(msgpack.packb(payload))


def test_protocol_error_is_a_cbctl_error():
    from cbctl.errors import CbctlError

    assert issubclass(ProtocolError, CbctlError)
