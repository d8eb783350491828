"""Large values through shared memory on a real cluster (runtime/wire/shared.py): arguments, results, DAG edges and
store reads and writes of arrays take it (the scheduler forwards handles and counts their bytes, never holding a
value); nothing lent is left in /dev/shm once taken, released, or its cluster stopped; a client with shared memory
off still gets every value through zmq frames; and a value whose shared memory is gone fails its request with a
clear error, leaving the store serving."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import cbctl
from cbctl.errors import DecodeError
from cbctl.runtime.wire import serialization
from cbctl.runtime.wire import shared as shm
from cbctl.runtime.wire.frames import Frames

MB = 1 << 20

pytestmark = pytest.mark.cbctl(executors=2)


def total(cb, array):
    return [int(array.nbytes), int(array.sum())]


def ones(cb, n):
    import numpy as np

    return np.ones(n, dtype=np.uint8)


def twice(cb, array):
    array *= 2  # in place, over the mapping this executor received
    return array


def plus_one(cb, array):
    return array + 1


def names_of(pids: set[int]) -> list[str]:
    """Lending names and pooled segments in /dev/shm made by ``pids``."""
    return [n for n in os.listdir(shm.DIRECTORY) if n.startswith("cbctl-") and int(n.split("-")[1]) in pids]


@pytest.fixture
def client(cbctl_client):
    client = cbctl_client
    for fn in (total, ones, twice, plus_one):
        client.register(fn, name=fn.__name__)
    client.register_dag("twice_plus_one", ["twice", "plus_one"], [("twice", "plus_one")])
    return client


def counters(client) -> dict:
    return client.cluster_info()["counters"]


def test_arguments_results_and_dag_edges_go_through_shared_memory_and_leave_nothing_lent(cbctl_cluster, client):
    array = np.random.default_rng(5).integers(0, 200, 16 * MB, dtype=np.uint8)
    before = counters(client)
    lent = shm.stats["values_lent"]
    assert client.call("total", array, timeout=60) == [array.nbytes, int(array.sum())]
    after = counters(client)
    assert after["shared_memory_bytes"] - before["shared_memory_bytes"] >= array.nbytes, after
    assert after["largest_parsed_bytes"] < 64 << 10, after  # the scheduler held a header, never the array
    assert shm.stats["values_lent"] > lent  # the client lent it
    result = client.call("ones", 8 * MB, timeout=60)
    assert result.shape == (8 * MB,) and int(result.sum()) == 8 * MB and result.flags.writeable
    chained = client.call("twice_plus_one", array, timeout=60)  # client -> executor -> executor -> client
    assert np.array_equal(chained, array * 2 + 1)
    assert int(array[0]) == int(np.random.default_rng(5).integers(0, 200, 1, dtype=np.uint8)[0])  # caller's intact
    # every lending was taken, and the client released its calls' arguments: only pooled segments remain
    pids = set(cbctl_cluster.pids()) | {os.getpid()}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [n for n in names_of(pids) if not n.endswith("-s")]:
        time.sleep(0.05)
    assert [n for n in names_of(pids) if not n.endswith("-s")] == []


def test_an_executor_lets_go_of_an_argument_once_its_step_ends(client):
    """The client's segment is free for its next call as soon as the call returns: the executor does not hold
    the last argument it received until another call comes."""
    array = np.ones(8 * MB, dtype=np.uint8)
    for _ in range(3):
        assert client.call("total", array, timeout=60) == [array.nbytes, array.nbytes]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(s.is_free() for s in shm._pool):
            time.sleep(0.01)
        assert shm._pool and all(s.is_free() for s in shm._pool)


def test_store_writes_and_reads_of_large_values_go_through_shared_memory(client):
    array = np.arange(4 * MB, dtype=np.float64)
    lent = shm.stats["values_lent"]
    store_mapped = client.store_stats()["shared_memory"]["segments_mapped"]
    client.put("shm/array", array)
    assert shm.stats["values_lent"] > lent
    assert client.store_stats()["shared_memory"]["segments_mapped"] > store_mapped  # the store mapped it
    mapped = shm.stats["segments_mapped"]
    back = client.get("shm/array")
    assert np.array_equal(back, array) and back.flags.writeable
    assert shm.stats["segments_mapped"] > mapped  # the store lent its answer
    back[:] = 0  # the reader's own memory: the store's value is unchanged
    assert np.array_equal(client.get("shm/array"), array)
    assert client.call("total", cbctl.Ref("shm/array"), timeout=60) == [array.nbytes, int(array.sum())]


def test_a_client_with_shared_memory_off_sends_values_as_frames(client):
    array = np.full(8 * MB, 3, dtype=np.uint8)
    before = counters(client)
    shm.set_enabled(False)
    try:
        assert client.call("total", array, timeout=60) == [array.nbytes, 3 * array.nbytes]
    finally:
        shm.set_enabled(None)
    after = counters(client)
    assert after["shared_memory_bytes"] == before["shared_memory_bytes"]
    assert after["out_of_band_bytes"] - before["out_of_band_bytes"] >= array.nbytes


def test_a_write_whose_shared_memory_is_gone_fails_clearly_and_the_store_serves_on(client):
    encoded = serialization.encode(np.ones(2 * MB, dtype=np.uint8))
    assert type(encoded) is Frames
    handle = shm.Handle(shm.lend(encoded.parts[1], shm.KEEP))
    shm.release([handle.name])  # gone before the store can map it
    store = client._store
    with pytest.raises(DecodeError, match="shared memory"):
        store.put_lww("shm/gone", store.new_lww(Frames([encoded.parts[0], handle]), "shm/gone"))
    client.put("shm/after", b"fine")
    assert client.get("shm/after") == b"fine"
    assert client.get("shm/gone", None) is None


def test_a_stopped_cluster_leaves_nothing_in_dev_shm(tmp_path):
    local = cbctl.local(executors=1, home=tmp_path / "home")
    try:
        client = local.start()
        client.register(ones, name="ones")
        client.register(total, name="total")
        assert client.call("ones", 4 * MB, timeout=60).sum() == 4 * MB
        assert client.call("total", np.ones(4 * MB, dtype=np.uint8), timeout=60)[0] == 4 * MB
        pids = set(local.pids())
        assert names_of(pids), "the executor lent its result through a pooled segment"
    finally:
        local.close()
    assert names_of(pids) == []
