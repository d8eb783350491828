"""Limits with clear errors, from Python and from the shell: the per-value size limit at every place a value
enters (client arguments and puts, a function's result, cb.put and cbctl.Continue, `cbctl put`), the zmq
backstop behind it, DAG size, call timeouts, a deploy file that hangs at import, a result that cannot be
serialised, and peers of another protocol version. Each refusal is one line naming the limit and what to do,
and no server dies.

One 2-executor cluster with a 1 MiB limit is shared by the module (tests use names of their own).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

import cbctl
from cbctl.declare import DeployFileError
from cbctl.runtime.defaults import MAX_DAG_FUNCTIONS, PROTOCOL_VERSION
from cbctl.runtime.wire import frames, limits, messages
from tests.conftest import RunningCluster, run_cli
from tests.integration import shared_cluster
from tests.integration.shared_cluster import DEPLOYABLES
from tests.integration.test_usability import one_error_line, restarts

LIMIT = 1 << 20
OVER = 2 << 20  # bytes a function or the client is asked to send: twice the limit


pytestmark = pytest.mark.cbctl(deploy=[DEPLOYABLES / "limits_fns.py"], max_message_mb=1)


@pytest.fixture
def limited(cbctl_cluster) -> Iterator[RunningCluster]:
    with shared_cluster.view(cbctl_cluster) as handle:
        yield handle


def assert_too_large(exc: BaseException, what: str) -> None:
    text = str(exc)
    assert isinstance(exc, cbctl.MessageTooLarge), (type(exc), text)
    assert text.startswith(what) and "over this cluster's limit of 1 MiB" in text, text
    assert "cbctl up --max-message-mb N" in text and "\n" not in text


def raw_peer(address: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


# --- message size -----------------------------------------------------------------------------------------


def test_the_limit_is_recorded_for_clients_and_values_under_it_travel(limited):
    assert limited.cluster_file().max_message_bytes == LIMIT
    client = limited.client()
    assert client.max_message_bytes == LIMIT
    half = b"x" * (LIMIT // 2)
    client.put("lim/half", half)
    assert client.get("lim/half") == half
    assert client.call("lim_size", half, timeout=10) == len(half)
    assert client.call("lim_chain", LIMIT // 2, timeout=10) == LIMIT // 2


def test_the_client_refuses_oversized_arguments_and_puts_before_sending(limited):
    client = limited.client()
    with pytest.raises(cbctl.MessageTooLarge) as raised:
        client.put("lim/big", b"x" * OVER)
    assert_too_large(raised.value, "the value for key 'lim/big'")
    with pytest.raises(cbctl.NoSuchKey):
        client.get("lim/big")
    with pytest.raises(cbctl.MessageTooLarge) as raised:
        client.call("lim_size", b"x" * OVER, timeout=10)
    assert_too_large(raised.value, "the arguments of the call of 'lim_size'")
    with pytest.raises(cbctl.MessageTooLarge) as raised:
        client.call("lim_chain", lim_blob=[b"x" * (LIMIT // 2)] * 3, timeout=10)  # per-source arguments count too
    assert_too_large(raised.value, "the arguments of 'lim_blob' in the call of 'lim_chain'")
    with pytest.raises(cbctl.MessageTooLarge) as raised:  # each under the limit, but they travel in one frame
        client.call("lim_chain", b"y" * (LIMIT // 2), lim_blob=[b"x" * (LIMIT // 2)], timeout=10)
    assert_too_large(raised.value, "the arguments of the call of 'lim_chain' together")
    with pytest.raises(cbctl.MessageTooLarge) as raised:
        client.register(lambda cb, blob=b"x" * OVER: len(blob), name="lim_heavy_code")
    assert_too_large(raised.value, "the code of function 'lim_heavy_code'")
    assert client.call("lim_size", b"abc", timeout=10) == 3  # the client is fine afterwards


def test_cbctl_put_over_the_limit_is_one_line_and_writes_nothing(limited):
    one_error_line(limited.cli("put", "lim/cli-big", "-", input="y" * OVER),
                   "the value for key 'lim/cli-big'", "limit of 1 MiB", "--max-message-mb")
    assert limited.cli("get", "lim/cli-big").returncode == 1


def test_a_result_over_the_limit_fails_the_call_and_the_executor_goes_on(limited):
    before = restarts(limited)
    client = limited.client()
    for name in ("lim_blob", "lim_chain"):  # alone, and as a DAG's first step (its result is a trigger)
        with pytest.raises(cbctl.MessageTooLarge) as raised:
            client.call(name, OVER, timeout=10)
        assert_too_large(raised.value, "the result of function 'lim_blob'")
    one_error_line(limited.cli("call", "lim_blob", str(OVER)), "the result of function 'lim_blob'",
                   "limit of 1 MiB", "--max-message-mb")
    future = client.call_async("lim_blob", OVER, store_result=True)  # a result read from the store
    with pytest.raises(cbctl.MessageTooLarge):
        future.result(timeout=10)
    assert [client.call("lim_blob", 10, timeout=10) for _ in range(4)] == [b"x" * 10] * 4
    assert restarts(limited) == before


def test_cb_put_over_the_limit_raises_in_the_function(limited):
    client = limited.client()
    with pytest.raises(cbctl.MessageTooLarge) as raised:
        client.call("lim_put", "lim/fn-big", OVER, timeout=10)
    assert_too_large(raised.value, "the value cb.put writes under key 'lim/fn-big'")
    caught = client.call("lim_put_caught", "lim/fn-big", OVER, timeout=10)
    assert caught.startswith("refused: the value cb.put writes under key 'lim/fn-big'")
    with pytest.raises(cbctl.NoSuchKey):
        client.get("lim/fn-big")
    assert client.call("lim_put", "lim/fn-small", 100, timeout=10) == "stored"


def test_continue_with_arguments_over_the_limit_fails_the_call(limited):
    client = limited.client()
    with pytest.raises(cbctl.MessageTooLarge) as raised:
        client.call("lim_continue", OVER, timeout=10)
    assert_too_large(raised.value, "the arguments of cbctl.Continue('lim_size')")
    assert client.call("lim_continue", 100, timeout=10) == 100


def test_a_frame_past_the_backstop_costs_its_sender_the_connection_and_nothing_else(limited):
    """A peer that skips the client's check: zmq drops its connection before the scheduler or the store sees
    the frame (a small bad frame sent after it is the only one they count), and both go on serving."""
    before = restarts(limited)
    client = limited.client()
    found = limited.cluster_file()
    huge = b"\x00" * (limits.backstop_bytes(LIMIT) + 1)
    counted = {"scheduler": lambda: client.cluster_info()["counters"]["protocol_errors"],
               "store": lambda: client.store_stats()["protocol_errors"]}
    for role, address in (("scheduler", found.scheduler_addresses[0]), ("store", found.store_address)):
        errors_before = counted[role]()
        hostile = raw_peer(address)
        monitor = hostile.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        hostile.send(huge)
        assert monitor.poll(10_000), f"the {role} did not drop the connection of a peer sending a huge frame"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        hostile.disable_monitor()
        monitor.close()
        hostile.close()
        # Two small bad frames, each sent once the one before was counted: the huge frame, sent before both,
        # would have been counted by then if the server had read it, so the count is exactly two more.
        for sent in (1, 2):
            small = raw_peer(address)
            small.send(b"\x00")  # not a message: counted and dropped
            limited.wait_for(lambda role=role, floor=errors_before + sent: counted[role]() >= floor, timeout=10,
                             what=f"the {role} to count the small frame")
            small.close()
        assert counted[role]() == errors_before + 2, role
    assert client.call("lim_chain", 1000, timeout=10) == 1000
    assert restarts(limited) == before


def test_frames_that_together_pass_the_limit_are_refused_with_an_error_and_the_servers_serve_on(limited, tmp_path):
    """zmq bounds each frame; a multi-frame message (a large value as frames of its own) is bounded in total as
    well: its frames are dropped as they come, the store answers the sender MessageTooLarge for the request, the
    scheduler counts it and answers the call's caller MessageTooLarge, and neither holds it or dies."""
    before = restarts(limited)
    client = limited.client()
    found = limited.cluster_file()
    part = b"\x00" * (limits.backstop_bytes(LIMIT) // 2)  # each frame under the bound, three together over it
    value = frames.Frames([msgpack.packb(None), part, part, part])
    store_before = client.store_stats()
    hostile = raw_peer(found.store_address)
    hostile.send_multipart(messages.PutRequest(41, "lim/parts", ["lww", time.time_ns(), "w", value, False]).pack(),
                           copy=False)
    assert hostile.poll(10_000), "the store did not answer a put whose frames together are over the limit"
    reply = frames.unpack(hostile.recv())
    hostile.close()
    assert isinstance(reply, messages.ErrorResponse) and reply.req_id == 41, reply
    assert reply.error_type == "MessageTooLarge" and "cbctl up --max-message-mb N" in reply.message, reply
    assert "in all its frames" in reply.message and "\n" not in reply.message
    store_after = client.store_stats()
    assert store_after["oversized_refused"] == store_before["oversized_refused"] + 1
    assert store_after["puts"] == store_before["puts"]  # never applied
    with pytest.raises(cbctl.NoSuchKey):
        client.get("lim/parts")
    errors_before = client.cluster_info()["counters"]["protocol_errors"]
    hostile = raw_peer(found.scheduler_addresses[0])
    replies = zmq.Context.instance().socket(zmq.PULL)
    reply_address = f"ipc://{tmp_path}/lim-replies"
    replies.bind(reply_address)
    try:
        hostile.send_multipart(messages.CallRequest("c-lim", "lim_size", value, {}, reply_address, False, "lww",
                                                    []).pack(), copy=False)
        assert replies.poll(10_000), "the scheduler did not answer the caller of a call over the limit"
        result = frames.unpack(replies.recv())
    finally:
        replies.close(linger=0)
        hostile.close()
    assert isinstance(result, messages.CallResult) and result.call_id == "c-lim" and not result.ok, result
    assert result.error_type == "MessageTooLarge" and "cbctl up --max-message-mb N" in result.message, result
    assert client.cluster_info()["counters"]["protocol_errors"] > errors_before
    client.put("lim/after", b"y" * 1000)
    assert client.get("lim/after") == b"y" * 1000
    assert client.call("lim_chain", 1000, timeout=10) == 1000
    assert restarts(limited) == before


# --- DAG size, timeouts, results that cannot travel -------------------------------------------------------


def test_a_dag_over_the_size_limit_is_refused_by_the_scheduler(limited):
    client = limited.client()
    names = [f"lim_f{i}" for i in range(MAX_DAG_FUNCTIONS + 1)]
    with pytest.raises(cbctl.InvalidDag, match=f"{len(names)} functions, over the limit of {MAX_DAG_FUNCTIONS}"):
        client.register_dag("lim_huge", names)
    assert "lim_huge" not in {d["name"] for d in client.list()["dags"]}


def test_a_call_past_its_timeout_says_how_to_wait_longer(limited):
    client = limited.client()
    with pytest.raises(cbctl.CallTimeout) as raised:
        client.call("lim_nap", 2, timeout=0.3)
    assert "did not finish within 0.3 s" in str(raised.value) and "timeout=" in str(raised.value)
    with pytest.raises(cbctl.CallTimeout, match="within 0.2 s"):
        client.call_async("lim_nap", 2).result(timeout=0.2)
    one_error_line(limited.cli("call", "lim_nap", "2", "--timeout", "0.3"), "did not finish within 0.3 s",
                   "cbctl call --timeout S")
    assert "[default: 60.0" in limited.cli("call", "--help").stdout


def test_a_result_that_cannot_be_serialised_in_a_dag_is_one_typed_error(limited):
    client = limited.client()
    with pytest.raises(cbctl.FunctionError) as raised:
        client.call("lim_lock_chain", timeout=10)
    assert raised.value.remote_type == "ResultNotSerializable"
    assert "function 'lim_lock' returned a lock, which cannot be serialised" in str(raised.value)
    one_error_line(limited.cli("call", "lim_lock_chain"), "'lim_lock' returned a lock", "cannot be serialised")


# --- deploy files that hang at import ---------------------------------------------------------------------


HANGS = """
import threading
import cbctl

@cbctl.function
def lim_never_registered(cb):
    return 1

threading.Event().wait(30)  # long past the timeouts below, and not for ever: no thread outlives the suite
"""


def test_a_deploy_file_that_hangs_at_import_is_given_up_on_and_registers_nothing(limited, tmp_path):
    path = tmp_path / "hangs.py"
    path.write_text(HANGS)
    started = time.monotonic()
    result = limited.cli("deploy", str(path), "--import-timeout", "1", timeout=30)
    assert time.monotonic() - started < 15  # the CLI exits although the import thread never ends
    one_error_line(result, "hangs.py did not finish importing within 1 s", "--import-timeout")
    client = limited.client()
    with pytest.raises(DeployFileError, match="within 0.5 s"):
        client.deploy_file(path, import_timeout=0.5)
    assert "lim_never_registered" not in {f["name"] for f in client.list()["functions"]}
    assert client.call("lim_size", b"ok", timeout=10) == 2


# --- protocol versions ------------------------------------------------------------------------------------


def test_a_peer_of_another_version_is_told_and_no_server_dies(limited):
    before = restarts(limited)
    found = limited.cluster_file()
    client = limited.client()
    counted = {"scheduler": lambda: client.cluster_info()["counters"]["protocol_errors"],
               "store": lambda: client.store_stats()["protocol_errors"],
               "supervisor": lambda: client.supervisor_status()["protocol_errors"]}
    errors_before = {role: count() for role, count in counted.items()}  # the module's cluster counted others
    for role, address in (("scheduler", found.scheduler_addresses[0]), ("store", found.store_address),
                          ("supervisor", found.control_address)):
        peer = raw_peer(address)
        try:
            peer.send(msgpack.packb([99, 30, 1, "name", b"code", {}]))
            assert peer.poll(10_000), f"the {role} did not answer a version-99 frame"
            version, kind, text = msgpack.unpackb(peer.recv())
        finally:
            peer.close()
        assert (version, kind) == (PROTOCOL_VERSION, 0), role
        assert text.startswith(f"the {role} speaks cbctl protocol version {PROTOCOL_VERSION}") and "not 99" in text
    assert {role: count() for role, count in counted.items()} == {
        role: count + 1 for role, count in errors_before.items()}, "each server counts the frame once"
    assert client.call("lim_chain", 10, timeout=10) == 10
    assert restarts(limited) == before


def test_a_client_of_another_version_gets_a_protocol_error_naming_both(limited, monkeypatch):
    client = limited.client()
    monkeypatch.setattr(frames, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)  # this process now speaks the next
    expected = f"speaks cbctl protocol version {PROTOCOL_VERSION} .*not {PROTOCOL_VERSION + 1}"
    with pytest.raises(cbctl.ProtocolError, match="the scheduler " + expected):
        client.list()
    with pytest.raises(cbctl.ProtocolError, match="the store " + expected):
        client.get("lim/half")
    with pytest.raises(cbctl.ProtocolError, match="the supervisor " + expected):
        client.supervisor_status()
    started = time.monotonic()
    with pytest.raises(cbctl.ProtocolError, match="the scheduler " + expected):
        client.call("lim_size", b"x", timeout=20)
    assert time.monotonic() - started < 5  # told, not left to time out


def test_up_refuses_an_impossible_message_limit(tmp_path):
    result = run_cli(tmp_path / "never", "up", "--max-message-mb", "0")
    one_error_line(result, "--max-message-mb 0 is out of range", "pass 1 to 2048")
