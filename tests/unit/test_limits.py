"""Limits (pure parts): the value size check and its message, the zmq backstop, DAG size limits, the version
refusal frame, the `cbctl up --max-message-mb` range, the default call timeout, and a deploy file's import
timeout."""

from __future__ import annotations

import builtins
import inspect
import threading
import time

import msgpack
import pytest

from cbctl.client import CallFuture, Client
from cbctl.declare import DeployFileError, load_file
from cbctl.errors import CbctlError, InvalidArgument, InvalidDag, MessageTooLarge, ProtocolError
from cbctl.lifecycle import plan_spec
from cbctl.runtime.dag import chain_edges, validate_dag
from cbctl.runtime.defaults import (
    CALL_TIMEOUT_S,
    FRAME_HEADROOM_BYTES,
    MAX_DAG_EDGES,
    MAX_DAG_FUNCTIONS,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
)
from cbctl.runtime.wire import limits, messages
from cbctl.runtime.wire.messages import GetRequest, unpack, version_refusal

# --- value size -------------------------------------------------------------------------------------------


def test_a_value_at_the_limit_passes_and_one_byte_more_is_refused_naming_sizes_and_option():
    limits.check_size(1 << 20, 1 << 20, "the value for key 'k'")
    with pytest.raises(MessageTooLarge) as raised:
        limits.check_size((1 << 20) + 1, 1 << 20, "the value for key 'k'")
    text = str(raised.value)
    assert "the value for key 'k'" in text and "1048577 bytes" in text and "limit of 1 MiB" in text
    assert "cbctl up --max-message-mb N" in text and "\n" not in text
    assert issubclass(MessageTooLarge, CbctlError)


def test_sizes_read_as_mib():
    assert limits.mib(64 << 20) == "64 MiB"
    assert limits.mib(3 << 19) == "1.5 MiB"


def test_the_backstop_is_above_the_limit_by_the_headroom():
    assert limits.backstop_bytes(1 << 20) == (1 << 20) + FRAME_HEADROOM_BYTES
    assert limits.backstop_bytes() > MAX_MESSAGE_BYTES


def test_max_message_mb_is_checked_and_becomes_bytes():
    assert plan_spec(1, 0, 1, "", "batch", 0, 64, max_message_mb=3).max_message_bytes == 3 << 20
    assert plan_spec(1, 0, 1, "", "batch", 0, 64).max_message_bytes == MAX_MESSAGE_BYTES
    for bad in (0, -1, 4096):
        with pytest.raises(InvalidArgument, match=f"--max-message-mb {bad} is out of range"):
            plan_spec(1, 0, 1, "", "batch", 0, 64, max_message_mb=bad)


# --- DAG size ---------------------------------------------------------------------------------------------


def test_a_dag_at_the_size_limits_is_accepted():
    names = [f"f{i}" for i in range(MAX_DAG_FUNCTIONS)]
    edges = chain_edges(names)  # every function but the last feeds one: a single sink
    edges += [(a, b) for i, a in enumerate(names) for b in names[i + 2:]][:MAX_DAG_EDGES - len(edges)]
    assert len(edges) == MAX_DAG_EDGES
    shape = validate_dag("largest", names, edges, names)
    assert shape.sink == names[-1] and len(shape.edges) == MAX_DAG_EDGES


def test_too_many_functions_is_refused_with_the_limit():
    names = [f"f{i}" for i in range(MAX_DAG_FUNCTIONS + 1)]
    with pytest.raises(InvalidDag, match=f"{MAX_DAG_FUNCTIONS + 1} functions, over the limit of "
                                         f"{MAX_DAG_FUNCTIONS} per DAG") as raised:
        validate_dag("huge", names, chain_edges(names), names)
    assert "cbctl.Continue" in str(raised.value)


def test_too_many_edges_is_refused_with_the_limit_before_any_costly_check():
    started = time.perf_counter()
    edges = [("a", "b")] * 1_000_000  # duplicates: the duplicate check alone would be quadratic
    with pytest.raises(InvalidDag, match=f"1000000 edges, over the limit of {MAX_DAG_EDGES} per DAG"):
        validate_dag("dense", ["a", "b"], edges, {"a", "b"})
    assert time.perf_counter() - started < 1.0


def test_limits_can_be_passed_explicitly():
    with pytest.raises(InvalidDag, match="3 functions, over the limit of 2"):
        validate_dag("small", ["a", "b", "c"], chain_edges(["a", "b", "c"]), {"a", "b", "c"}, max_functions=2)
    with pytest.raises(InvalidDag, match="2 edges, over the limit of 1"):
        validate_dag("small", ["a", "b", "c"], chain_edges(["a", "b", "c"]), {"a", "b", "c"}, max_edges=1)


# --- protocol version refusal -----------------------------------------------------------------------------


def test_a_frame_of_another_version_gets_a_refusal_that_any_version_reads():
    frame = msgpack.packb([99, GetRequest.KIND, 1, ["k"]])
    with pytest.raises(ProtocolError):
        unpack(frame)
    refusal = version_refusal(frame, "the store")
    assert refusal is not None
    version, kind, text = msgpack.unpackb(refusal)  # the fixed layout: [sender_version, 0, text]
    assert (version, kind) == (PROTOCOL_VERSION, messages.VERSION_REFUSAL_KIND) == (PROTOCOL_VERSION, 0)
    assert f"the store speaks cbctl protocol version {PROTOCOL_VERSION}" in text and "not 99" in text
    with pytest.raises(ProtocolError, match="the cluster refused this request: the store speaks"):
        unpack(refusal)


def test_a_refusal_of_any_version_is_read_as_a_protocol_error():
    with pytest.raises(ProtocolError, match="refused this request: upgrade"):
        unpack(msgpack.packb([7, 0, "upgrade"]))
    with pytest.raises(ProtocolError, match="no reason given"):
        unpack(msgpack.packb([7, 0]))


@pytest.mark.parametrize("frame", [
    GetRequest(1, ["k"]).pack(),  # this version: nothing to refuse
    msgpack.packb([99, 0, "a refusal"]),  # never answer a refusal (two servers would refuse each other for ever)
    b"\xc1 not msgpack",
    msgpack.packb({"not": "an array"}),
    msgpack.packb([99]),
])
def test_nothing_is_answered_to_frames_that_are_not_another_versions_messages(frame):
    assert version_refusal(frame, "the scheduler") is None


def test_a_huge_foreign_version_is_shown_shortened():
    refusal = version_refusal(msgpack.packb(["v" * 10_000, 30]), "the scheduler")
    assert refusal is not None and len(refusal) < 1000


def test_kind_zero_is_reserved():
    with pytest.raises(RuntimeError, match="kind 0 registered twice"):
        messages.message(0)(type("Impostor", (), {}))


# --- call timeout default ---------------------------------------------------------------------------------


def test_calls_and_futures_share_one_default_timeout():
    assert inspect.signature(Client.call).parameters["timeout"].default == CALL_TIMEOUT_S
    assert inspect.signature(CallFuture.result).parameters["timeout"].default == CALL_TIMEOUT_S
    assert 0 < CALL_TIMEOUT_S < float("inf")


# --- deploy file import timeout ---------------------------------------------------------------------------


HANGING = """
import builtins
import cbctl

builtins._cbctl_test_release.wait()  # blocks at import until the test lets it go

@cbctl.function
def late(cb):
    return 1
"""

PLAIN = """
import cbctl

@cbctl.function
def plain(cb):
    return 2
"""


def test_a_file_that_hangs_at_import_is_given_up_on_and_declares_nothing_later(tmp_path):
    release = builtins._cbctl_test_release = threading.Event()
    try:
        (tmp_path / "hangs.py").write_text(HANGING)
        earlier = set(threading.enumerate())  # another test's abandoned import may have the same thread name
        started = time.monotonic()
        with pytest.raises(DeployFileError) as raised:
            load_file(tmp_path / "hangs.py", import_timeout=0.3)
        assert time.monotonic() - started < 2.0
        text = str(raised.value)
        assert "hangs.py did not finish importing within 0.3 s" in text and "--import-timeout" in text
        release.set()  # the abandoned import now goes on and declares `late`...
        deadline = time.monotonic() + 5
        while any(t.name == "cbctl-import-hangs.py" for t in set(threading.enumerate()) - earlier):
            assert time.monotonic() < deadline, "the abandoned import did not finish once released"
            time.sleep(0.01)
        (tmp_path / "plain.py").write_text(PLAIN)
        found = load_file(tmp_path / "plain.py")
        assert [f.name for f in found.functions] == ["plain"]  # ...into nothing a later deploy sees
    finally:
        release.set()
        del builtins._cbctl_test_release


def test_an_import_within_its_timeout_loads_as_before(tmp_path):
    (tmp_path / "plain.py").write_text(PLAIN)
    assert [f.name for f in load_file(tmp_path / "plain.py", import_timeout=30).functions] == ["plain"]
    assert [f.name for f in load_file(tmp_path / "plain.py", import_timeout=None).functions] == ["plain"]


def test_max_trigger_depth_is_checked():
    assert plan_spec(1, 0, 1, "", "batch", 0, 64, max_trigger_depth=4).max_trigger_depth == 4
    with pytest.raises(InvalidArgument, match="--max-trigger-depth 0 is below 1"):
        plan_spec(1, 0, 1, "", "batch", 0, 64, max_trigger_depth=0)


def test_executor_memory_mb_is_off_by_default_and_checked():
    assert plan_spec(1, 0, 1, "", "batch", 0, 64).executor_memory_mb == 0
    assert plan_spec(1, 0, 1, "", "batch", 0, 64, executor_memory_mb=512).executor_memory_mb == 512
    with pytest.raises(InvalidArgument, match="--executor-memory-mb -1 is negative"):
        plan_spec(1, 0, 1, "", "batch", 0, 64, executor_memory_mb=-1)
