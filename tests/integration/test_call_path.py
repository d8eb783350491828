"""The call path's answers on real clusters: every call gets exactly one, carrying what it must (its writes,
for the client's read-your-writes), and per-call state is freed when it ends."""

from __future__ import annotations

import functools
import time

import pytest
import zmq

from cbctl.errors import FunctionError
from cbctl.runtime.store_client import StoreClient
from tests.conftest import RunningCluster
from tests.integration import shared_cluster
from tests.integration.shared_cluster import DEPLOYABLES

FUNCTIONS = DEPLOYABLES / "call_path_fns.py"
EXECUTORS = 3
read_on_every_executor = functools.partial(shared_cluster.read_on_every_executor, count=EXECUTORS)


pytestmark = [pytest.mark.cbctl(executors=EXECUTORS, deploy=[FUNCTIONS]), pytest.mark.both_stores]


def drop_subscriptions(handle: RunningCluster, keys: list[str]) -> None:
    """Unsubscribe every executor from ``keys`` at the store: their pushes are lost from now on."""
    if handle.redis is not None:
        pytest.skip("on Redis a test cannot unsubscribe an executor's pub/sub connection from outside (lost pushes "
                    "are simulated on the embedded store; the cache's freshness check is the same code)")
    store = StoreClient(zmq.Context.instance(), handle.cluster_file().store_address, writer_id="test")
    try:
        for p in handle.cluster_file().processes:
            if p.role == "executor":
                store.subscribe(f"executor-{p.index}", p.address, keys, unsubscribe=True)
    finally:
        store.close()


def test_an_exception_whose_str_raises_still_answers_the_call(shared):
    client = shared.client()
    with pytest.raises(FunctionError) as raised:
        client.call("raise_unprintable", timeout=10)
    assert raised.value.remote_type == "UnprintableError"
    assert client.call("whoami", timeout=10).startswith("executor-")  # and the executor carries on


def test_writes_made_before_a_continuation_are_the_callers_to_read(shared):
    """Read-your-writes across calls covers the writes a call made before handing itself on with Continue."""
    setter, client = shared.client(), shared.client()
    setter.put("continued-key", "old")
    assert set(read_on_every_executor(client, "continued-key").values()) == {"old"}  # cached everywhere
    drop_subscriptions(shared, ["continued-key"])  # no push will tell the caches
    assert client.call("write_then_continue", "continued-key", "new", timeout=10).startswith("executor-")
    assert set(read_on_every_executor(client, "continued-key").values()) == {"new"}


def snapshots_held(client, after: float) -> int | None:
    """Snapshots every executor holds, by statuses sent after ``after`` (None until each has sent one)."""
    asked = time.monotonic()
    statuses = client.cluster_info()["executors"].values()
    if not all(asked - s["status_age_s"] > after for s in statuses):
        return None
    return sum(s["metrics"]["cache"]["snapshots"] for s in statuses)


def snapshot_seen(client, after: float) -> bool:
    """Whether a status sent after ``after`` shows a snapshot held (the napping executor sends none meanwhile:
    its one thread runs the nap)."""
    asked = time.monotonic()
    return any(asked - s["status_age_s"] > after and s["metrics"]["cache"]["snapshots"] >= 1
               for s in client.cluster_info()["executors"].values())


def test_a_continued_repeatable_read_call_releases_its_snapshots(shared):
    client = shared.client()
    client.put("rr-continued", "v")
    # the positive control: a repeatable-read DAG call whose sink still runs holds its first step's snapshot
    # (on the first step's executor, which reports it while the sink's naps)
    pins = {f["name"]: f["pinned"] for f in client.list()["functions"]}
    assert not set(pins["read_first"]) & set(pins["nap_after"]), pins
    started = time.monotonic()
    holding = client.call_async("read_then_nap", "rr-continued", 5, consistency="repeatable_read")
    shared.wait_for(lambda: snapshot_seen(client, started), timeout=4.5,
                    what="a running repeatable-read call's snapshot in a status")
    assert holding.result(timeout=20).startswith("executor-")
    answers = [client.call("read_then_continue", "rr-continued", consistency="repeatable_read", timeout=10)
               for _ in range(10)]
    assert all(answer.startswith("executor-") for answer in answers), answers  # answered by the continuation
    done = time.monotonic()
    # each holder releases its own at once, or on its next timer when another step ended the call
    shared.wait_for(lambda: snapshots_held(client, done) == 0, timeout=5, what="no repeatable-read snapshot left held")


def test_large_arguments_pass_the_scheduler_unread_and_come_back_whole(shared):
    """A 32 MB argument travels as frames of its own: the scheduler parses only a small header of the call (its
    own count of the largest frame it parsed) and forwards the array's bytes unread; arguments, results, DAG
    edges, continuations and direct messages of that size all arrive whole."""
    import numpy as np

    client = shared.client()
    before = client.cluster_info()["counters"]
    array = np.arange(32 << 20, dtype=np.uint8)
    assert client.call("big_sum", array, timeout=60) == [array.nbytes, int(array.sum()), True]
    after = client.cluster_info()["counters"]
    assert after["out_of_band_bytes"] - before["out_of_band_bytes"] >= array.nbytes
    # on one host it was lent through shared memory: the scheduler forwarded a handle (runtime/wire/shared.py)
    assert after["shared_memory_bytes"] - before["shared_memory_bytes"] >= array.nbytes
    assert after["largest_parsed_bytes"] < 64 << 10, after  # a header (and control requests), never the array
    doubled = client.call("big_chain", array, timeout=60)  # client -> scheduler -> executor(s) -> client
    assert doubled.dtype == np.uint8 and (doubled == array * 2).all() and doubled.flags.writeable
    assert (array[:3] == [0, 1, 2]).all()  # the caller's array is not changed by the function's in-place *= 2
    assert client.call("big_continue", array, timeout=60) == [array.nbytes, int(array.sum()), True]
    assert (client.call("big_send_to_self", array[: 1 << 20], timeout=60) == array[: 1 << 20]).all()
    assert client.cluster_info()["counters"]["largest_parsed_bytes"] < 64 << 10
