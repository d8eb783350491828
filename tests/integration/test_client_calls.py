"""The client's call path: ``call`` by the thread that reads the response socket (no future of its own) hands
the results it reads for other calls to their futures, a late result reaches a future still held, and results
of calls given up on leave nothing behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import cbctl
from tests.conftest import EXAMPLES, RunningCluster
from tests.integration import shared_cluster
from tests.integration.shared_cluster import TOOLKIT

pytestmark = pytest.mark.cbctl(deploy=[EXAMPLES / "pipeline.py", TOOLKIT])  # two executors


@pytest.fixture
def shared(request) -> Iterator[RunningCluster]:
    with shared_cluster.shared_on(request, None) as handle:
        yield handle


def test_a_call_hands_a_late_result_to_the_future_still_held_and_drops_the_given_up_ones(shared):
    client = cbctl.connect(shared.home)
    try:
        held = client.call_async("nap", 0.3)
        with pytest.raises(cbctl.CallTimeout, match="within 0.05 s"):
            held.result(timeout=0.05)
        with pytest.raises(cbctl.CallTimeout, match="within 0.05 s"):
            client.call("nap", 0.3, timeout=0.05)  # given up on: its result, when it comes, is dropped
        # this call reads the response socket until its own result is in, after both naps' results
        assert client.call("nap", 0.8, timeout=20) == 0.8
        assert held.done() and held.result(timeout=0) == 0.3
        assert client.call("pipeline", 2, timeout=20) == 9
        assert len(client._waiting) == 0  # nothing held for the dropped call, nor for the calls that returned
    finally:
        client.close()


def test_a_thread_waiting_on_a_future_gets_its_result_while_another_thread_calls(shared):
    client = cbctl.connect(shared.home)
    try:
        got: dict[str, float] = {}
        future = client.call_async("nap", 0.2)

        def wait() -> None:
            got["value"] = future.result(timeout=20)
            got["at"] = time.monotonic()

        waiter = threading.Thread(target=wait)
        waiter.start()
        assert client.call("nap", 1.0, timeout=20) == 1.0
        returned = time.monotonic()
        waiter.join(timeout=20)
        assert not waiter.is_alive()
        assert got["value"] == 0.2
        assert got["at"] < returned  # handed over as it came, not after the longer call returned
        futures = [client.call_async("pipeline", i) for i in range(20)]
        assert client.call("pipeline", 100, timeout=20) == 101 ** 2
        assert [f.result(timeout=20) for f in futures] == [(i + 1) ** 2 for i in range(20)]
        assert len(client._waiting) == 0
    finally:
        client.close()
