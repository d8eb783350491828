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
    "EncodedValue": b"\x00\xff\x80binary",
    "Any": {"nested": [1, 2.5, None, "x", b"y"], "flag": False},
    "list[str]": ["a", "b/c", ""],
    "list[Any]": ["lww", 17, "writer", b"value", False],
    "list[list[str]]": [["f", "g"], ["g", "h"]],
    "list[list[Any]]": [[0, 12, "tcp://10.0.0.2:5555", "cpu", "ready", 1.5, 0]],
    "dict[str, Any]": {"gpu": False, "batch": 8, "args": [1, "two"], "nested": {"k": None}},
    "dict[str, str]": {"f": "ipc:///tmp/x", "g": "tcp://127.0.0.1:5555"},
    "dict[str, int]": {"f": 1, "g": 2},
    "dict[str, bytes]": {"f": b"\x01", "g": b""},
    # checked values (messages.Valid): a good value of each
    "Pid": 4_194_304,
    "Count": 2**31 - 1,
    "CountOrKeep": -1,
    "Version": 1_796_136_486_191_367_907,
    "Address": "tcp://127.0.0.1:5555",
    "AddressOrNone": "ipc:///tmp/cbctl-x/sched-0",
    "ExecutorId": "host-b.lan/executor-12",
    "ExecutorIdOrNone": "executor-3",
    "ExecutorType": "gpu",
    "Role": "scheduler",
    "HostName": "10.0.0.2",
    "Utilization": 0.75,
    "dict[str, Address]": {"f": "ipc:///tmp/x", "g": "tcp://[::1]:5555"},
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


# Values of the right type that a server must not accept (issue 13: a status with a negative pid reached psutil on
# the scheduler's timer and ended every scheduler). (kind, field, bad value, what the error says a good one is)
BAD_VALUES = [
    ("ExecutorStatus", "pid", -1, "a pid"),
    ("ExecutorStatus", "pid", 0, "a pid"),
    ("ExecutorStatus", "pid", 2**40, "a pid"),
    ("ProcessReady", "pid", -33538, "a pid"),
    ("ExecutorLost", "pid", 0, "a pid"),
    ("ExecutorStatus", "queue_length", -1, "a count"),
    ("ExecutorStatus", "queue_length", 2**40, "a count"),
    ("ExecutorStatus", "utilization", float("nan"), "a finite utilization"),
    ("ExecutorStatus", "utilization", float("inf"), "a finite utilization"),
    ("ExecutorStatus", "utilization", -0.5, "a finite utilization"),
    ("ExecutorStatus", "executor_id", "fuzz-executor", "an executor id"),
    ("ExecutorStatus", "executor_id", "executor-", "an executor id"),
    ("ExecutorStatus", "executor_id", "../executor-1", "an executor id"),
    ("ExecutorStatus", "executor_type", "tpu", "an executor type"),
    ("ExecutorStatus", "address", "", "an address"),
    ("ExecutorStatus", "address", "http://127.0.0.1:80", "an address"),
    ("ExecutorStatus", "address", "tcp://127.0.0.1", "an address"),
    ("ExecutorStatus", "address", "ipc://" + "x" * 600, "an address"),
    ("ProcessReady", "role", "root", "a role"),
    ("ProcessReady", "index", -2, "a count"),
    ("ProcessReady", "address", "udp://x:1", "an address or ''"),
    ("PinRequest", "version", -1, "a version"),
    ("PinRequest", "scheduler_address", "nowhere", "an address"),
    ("ContinueCall", "depth", -1, "a count"),
    ("CallRetried", "attempt", -7, "a count"),
    ("LeavingAck", "sender", "", "an address"),
    ("VersionRequest", "reply_to", "tcp://h:99999999", "an address"),
    ("ExecutorLeaving", "heir_address", "x", "an address or ''"),
    ("CallResult", "executor_id", "scheduler", "an executor id or ''"),
    ("CallRequest", "response_address", "file:///etc/passwd", "an address or ''"),
    ("SubscribeRequest", "address", "", "an address"),
]


@pytest.mark.parametrize(("kind", "field_name", "value", "good"), BAD_VALUES,
                         ids=[f"{k}.{f}={v!r:.20}" for k, f, v, _ in BAD_VALUES])
def test_checked_values_are_refused_at_unpack(kind, field_name, value, good):
    cls = next(c for _, c in KINDS if c.__name__ == kind)
    decoded = msgpack.unpackb(sample_message(cls).pack())
    decoded[2 + cls._FIELDS.index(field_name)] = value
    with pytest.raises(ProtocolError, match=rf"{kind}\.{field_name} is .*, not {good}"):
        unpack(msgpack.packb(decoded))


def test_a_checked_value_inside_a_container_is_refused():
    trigger = msgpack.unpackb(sample_message(messages.DagTrigger).pack())
    trigger[2 + messages.DagTrigger._FIELDS.index("locations")] = {"f": "ipc:///tmp/x", "g": "nowhere"}
    with pytest.raises(ProtocolError, match=r"DagTrigger\.locations is a dict, not dict\[str, an address"):
        unpack(msgpack.packb(trigger))


@pytest.mark.parametrize("address", ["ipc:///tmp/cbctl-1/scheduler-0", "tcp://127.0.0.1:1", "tcp://[::1]:65535",
                                     "tcp://head.example.org:7000"])
def test_good_addresses_pass(address):
    assert messages.is_address(address)


@pytest.mark.parametrize("executor_id", ["executor-0", "executor-1234567", "10.0.0.2/executor-3", "h_b.lan/executor-9"])
def test_good_executor_ids_pass(executor_id):
    assert messages.is_executor_id(executor_id)


def test_a_remembered_check_stays_a_check_and_stays_bounded():
    """Address checks remember the strings they passed (frames name the same few in every call): a bad value is
    refused however many good ones came before it, and the memory of good ones never outgrows its bound."""
    from cbctl.runtime.wire.frames import REMEMBERED_STRINGS, _remembered, is_address

    check = _remembered(is_address)
    for i in range(REMEMBERED_STRINGS + 10):
        assert check(f"ipc:///tmp/cbctl-x/executor-{i}")
    assert check("ipc:///tmp/cbctl-x/executor-0")  # passed again (remembered, or matched once more)
    assert not check("tcp://host:not-a-port") and not check("")
    remembered = next(cell.cell_contents for cell in check.__closure__ if type(cell.cell_contents) is set)
    assert 0 < len(remembered) <= REMEMBERED_STRINGS
