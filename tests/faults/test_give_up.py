"""What a caller sees when a role stays away longer than the retries cover (README, "When a process dies"):
puts and gets to a store that does not answer fail with `StoreUnavailable` once `STORE_RETRY_BUDGET_S` has
passed, in the client and in a function; a control request a scheduler received and died without answering
fails after `CONTROL_TIMEOUT_S` with `ClusterNotRunning`, and the same request sent again is answered.

Both wait the real budgets (15 s each), the claims being about them."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

import cbctl
from cbctl.runtime.defaults import CONTROL_TIMEOUT_S, STORE_RETRY_BUDGET_S

#: What a give-up may take past its budget on a loaded machine (the last request's own timeout, scheduling).
LATE_S = 10.0


def put_in_function(cb, key):
    cb.put(key, "from a function")
    return "written"


def test_puts_and_gets_to_a_store_that_does_not_answer_fail_after_the_retry_budget(start_cluster):
    handle = start_cluster(executors=1)
    client, reader = handle.client(), handle.client()
    client.register(put_in_function, name="put_in_function")
    assert client.call("put_in_function", "give-up/warm", timeout=20) == "written"  # loaded, cached, pinned
    client.put("give-up/existing", 1)
    store = psutil.Process(handle.pid_of("store-0"))
    outcome: dict[str, object] = {}

    def get_in_thread() -> None:  # a store client per thread: the second client's get waits meanwhile
        started = time.monotonic()
        try:
            outcome["get"] = reader.get("give-up/existing")
        except BaseException as exc:  # read by the test below
            outcome["get"] = exc
        outcome["get_took"] = time.monotonic() - started

    store.suspend()  # SIGSTOP: alive, so the supervisor does not restart it, and it answers nothing
    try:
        started = time.monotonic()
        future = client.call_async("put_in_function", "give-up/during")
        getter = threading.Thread(target=get_in_thread, daemon=True)
        getter.start()
        with pytest.raises(cbctl.StoreUnavailable, match="did not answer"):
            client.put("give-up/new", 2)
        put_took = time.monotonic() - started
        with pytest.raises(cbctl.StoreUnavailable, match="did not answer"):  # cb.put's, as the caller's own
            future.result(timeout=STORE_RETRY_BUDGET_S + LATE_S + 10)
        call_took = time.monotonic() - started
        getter.join(STORE_RETRY_BUDGET_S + LATE_S + 10)
    finally:
        store.resume()
    assert isinstance(outcome.get("get"), cbctl.StoreUnavailable), outcome
    for what, took in (("put", put_took), ("get", outcome["get_took"]), ("cb.put", call_took)):
        assert STORE_RETRY_BUDGET_S <= took < STORE_RETRY_BUDGET_S + LATE_S, f"{what} gave up after {took:.1f} s"

    # the store answers again: the same clients and the function carry on
    resumed = time.monotonic()
    client.put("give-up/after", 3)
    assert reader.get("give-up/after") == 3
    # The executor sent no status while its cb.put waited (user code runs on its loop), and a scheduler places
    # nothing on an executor silent for POLICY_SILENCE_S (5 s): a call made before its next status fails with
    # NoExecutorAvailable at once (it does not wait DISPATCH_WAIT_S for it, as after a death). Wait for that
    # status, as the scheduler should (reported to the lead).
    def reported_since_resumed() -> bool:
        asked = time.monotonic()
        return all(asked - s["status_age_s"] > resumed for s in client.cluster_info()["executors"].values())

    handle.wait_for(reported_since_resumed, timeout=10, what="a status from the executor after the store came back")
    assert client.call("put_in_function", "give-up/later", timeout=20) == "written"


def bytes_waiting_at(port: int, from_ports: set[int]) -> int:
    """Bytes the kernel holds, unread, on the loopback TCP connections from ``from_ports`` to ``port`` (what a
    stopped scheduler has received and not read), from /proc/net/tcp (IPv4)."""
    waiting = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) in from_ports:
            waiting += int(queues.split(":")[1], 16)
    return waiting


def ports_to(port: int) -> set[int]:
    """This process's own ports of its TCP connections to ``port`` on loopback."""
    return {c.laddr.port for c in psutil.Process().net_connections(kind="tcp4") if c.raddr and c.raddr.port == port}


def test_a_control_request_a_dead_scheduler_never_answered_fails_then_is_answered_when_sent_again(start_cluster):
    # TCP, so that /proc/net/tcp shows when the stopped scheduler has the request (ipc queues are not visible)
    handle = start_cluster(executors=1, extra_args=("--listen", "tcp://127.0.0.1", "--no-auth"))
    client = handle.client()
    assert "functions" in client.list()  # connected
    address = handle.cluster_file().scheduler_addresses[0]
    port = int(address.rsplit(":", 1)[1])
    ours = ports_to(port)
    assert ours, f"the client has no connection to the scheduler at {address}"
    scheduler = psutil.Process(handle.pid_of("scheduler-0"))
    handle.wait_for(lambda: bytes_waiting_at(port, ours) == 0, timeout=10, what="the scheduler to read what it has")
    outcome: dict[str, object] = {}

    def list_in_thread() -> None:
        started = time.monotonic()
        try:
            outcome["list"] = client.list()
        except BaseException as exc:  # read by the test below
            outcome["list"] = exc
        outcome["took"] = time.monotonic() - started

    scheduler.suspend()
    lister = threading.Thread(target=list_in_thread, daemon=True)
    try:
        lister.start()
        handle.wait_for(lambda: bytes_waiting_at(port, ours) > 0, timeout=10,
                        what="the request to reach the stopped scheduler")
    finally:
        os.kill(scheduler.pid, signal.SIGKILL)  # dies with the request unread: nobody will answer it
    lister.join(CONTROL_TIMEOUT_S + LATE_S + 10)
    assert not lister.is_alive(), "the control request never returned"
    assert isinstance(outcome["list"], cbctl.ClusterNotRunning), outcome  # an answer: the request was not lost
    assert "did not answer" in str(outcome["list"]) and "cbctl status" in str(outcome["list"])
    assert CONTROL_TIMEOUT_S <= outcome["took"] < CONTROL_TIMEOUT_S + LATE_S, outcome["took"]

    # "run it again": the restarted scheduler answers (a request sent while it starts waits for it)
    handle.wait_for(lambda: handle.pid_of("scheduler-0") != scheduler.pid, timeout=20,
                    what="the scheduler to be restarted")
    assert "functions" in client.list()
