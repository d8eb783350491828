"""Large values through the store, on a real cluster: ``put``/``get`` from the client, ``cb.put``/``cb.get`` inside
functions and ``Ref`` arguments, with numpy arrays and bytes of tens of MB, come back exactly equal; a function's
changes to an array it put or read never reach the store's or the cache's copy; the embedded store forwards such
values as frames of their own, never parsing them (its own counters say so), and gets them back from its log after
a restart. The Redis backend keeps its values inline and must pass the same round trips."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import cbctl
from cbctl.runtime.defaults import OUT_OF_BAND_BYTES
from tests.conftest import STORE_BACKENDS

MB = 1 << 20
LIMIT_ARGS = ("--max-message-mb", "40")


def digest(value) -> list:
    """What a value is, exactly, small enough to send back: type, dtype, shape and a hash of its bytes."""
    if isinstance(value, np.ndarray):
        return ["ndarray", value.dtype.str, list(value.shape), hashlib.sha256(np.ascontiguousarray(value)).hexdigest()]
    return [type(value).__name__, len(value), hashlib.sha256(value).hexdigest()]


def expected_array(seed: int, mb: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(mb * MB // 8).reshape(-1, 1024)


def describe(cb, value):
    return digest(value)


def put_inside(cb, key, seed, mb):
    array = expected_array(seed, mb)
    cb.put(key, array)
    array[:] = -1.0  # the function's own array after the put: what was stored must not change with it
    return digest(cb.get(key))


def put_bytes_inside(cb, key, n):
    blob = bytes(range(256)) * n
    cb.put(key, blob)
    return digest(cb.get(key))


def read_twice(cb, key):
    first = cb.get(key)
    seen = digest(first)
    if isinstance(first, np.ndarray):
        first[:] = 0  # changing what cb.get returned must not change what the next cb.get returns
    return [seen, digest(cb.get(key))]


def stats(client) -> dict:
    return client.store_stats()


@pytest.mark.parametrize("store_backend", STORE_BACKENDS, indirect=True)
def test_large_arrays_and_bytes_round_trip_exactly_through_put_get_and_ref(start_cluster, store_backend):
    handle = start_cluster(executors=2, extra_args=LIMIT_ARGS)
    client = handle.client()
    for fn in (describe, put_inside, put_bytes_inside, read_twice):
        client.register(fn, name=fn.__name__)
    values = {
        "big/f64": expected_array(1, 32),  # 32 MB of float64, 2-D
        "big/i32": np.arange(5 * MB, dtype=np.int32)[::-1].reshape(1024, -1).T,  # not C-contiguous: sent as a copy
        "big/bytes": bytes(range(256)) * (20 * MB // 256) + b"tail",
        "big/edge": np.ones(OUT_OF_BAND_BYTES, dtype=np.uint8),  # exactly at the threshold
        "big/under": np.ones(OUT_OF_BAND_BYTES - 1, dtype=np.uint8),  # one under it: inline, as ever
    }
    for key, value in values.items():
        assert client.put(key, value) is True
    for key, value in values.items():
        back = client.get(key)
        if isinstance(value, np.ndarray):
            assert back.dtype == value.dtype and back.shape == value.shape and np.array_equal(back, value), key
            assert back.flags.writeable
        else:
            assert type(back) is bytes and back == value, key
        assert client.call("describe", cbctl.Ref(key), timeout=60) == digest(value), key
        assert client.call("read_twice", key, timeout=60) == [digest(value)] * 2, key
    # from inside a function: cb.put of a 24 MB array, read back there, from the client and through a Ref
    want = digest(expected_array(7, 24))
    assert client.call("put_inside", "big/inside", 7, 24, timeout=60) == want
    assert digest(client.get("big/inside")) == want
    assert client.call("describe", cbctl.Ref("big/inside"), timeout=60) == want
    assert client.call("read_twice", "big/inside", timeout=60) == [want, want]
    blob = bytes(range(256)) * (12 * MB // 256)
    assert client.call("put_bytes_inside", "big/bytes-inside", 12 * MB // 256, timeout=60) == digest(blob)
    assert client.get("big/bytes-inside") == blob
    assert client.call("describe", cbctl.Ref("big/bytes-inside"), timeout=60) == digest(blob)
    # a second write of the key replaces it everywhere, cached copies included
    client.put("big/f64", expected_array(2, 32))
    assert client.call("read_twice", "big/f64", timeout=60) == [digest(expected_array(2, 32))] * 2
    if store_backend == "embedded":
        counters = stats(client)
        # the store forwarded every large value as frames of its own: it never parsed one (a value inline in a
        # request or answer would be the largest frame it parsed), and they went both ways as frames
        # (big/under, one byte under the threshold, is the largest value that travels inline: it and its message)
        assert counters["largest_parsed_frame_bytes"] < OUT_OF_BAND_BYTES + 4096, counters
        assert counters["frames_in_bytes"] >= 32 * MB + 24 * MB + 20 * MB + 20 * MB + 12 * MB, counters
        assert counters["frames_out_bytes"] >= 32 * MB + 24 * MB + 20 * MB + 20 * MB, counters


def test_large_values_come_back_from_the_store_log_after_a_restart(start_cluster):
    handle = start_cluster(executors=1, extra_args=LIMIT_ARGS)
    client = handle.client()
    client.register(describe, name="describe")
    array, blob = expected_array(3, 16), b"\x07" * (3 * MB)
    client.put("log/array", array)
    client.put("log/bytes", blob)
    handle.close_clients()
    handle.cli("down", check=True)
    handle.cli("up", "--executors", "1", *LIMIT_ARGS, check=True, timeout=90)
    handle.pids()
    client = handle.client()
    assert np.array_equal(client.get("log/array"), array) and client.get("log/bytes") == blob
    assert client.call("describe", cbctl.Ref("log/array"), timeout=60) == digest(array)
    assert stats(client)["largest_parsed_frame_bytes"] < 4096  # replayed in parts, sent as frames


def rrbig_first(cb, key, marker):
    return {"key": key, "marker": marker, "seen": [[cb.getid(), digest(cb.get(key))]]}


def rrbig_middle(cb, state):
    import time

    state["seen"].append([cb.getid(), digest(cb.get(state["key"]))])
    cb.put(state["marker"], 1)  # tells the test to overwrite the key now
    time.sleep(1.0)
    return state


def rrbig_last(cb, state):
    return state["seen"] + [[cb.getid(), digest(cb.get(state["key"]))]]


def test_repeatable_read_of_a_large_value_sees_one_version_across_executors(start_cluster):
    """A repeatable-read call keeps the version of a large value it first read, and a step on another executor
    fetches that version from the first one's snapshot (a large value in a VersionResponse) while the store
    already holds a newer one."""
    handle = start_cluster(executors=3, extra_args=LIMIT_ARGS)  # three: the policy pins the steps apart
    client, other = handle.client(), handle.client()
    for fn in (rrbig_first, rrbig_middle, rrbig_last):
        client.register(fn, name=fn.__name__)
    client.register_dag("rrbig", ["rrbig_first", "rrbig_middle", "rrbig_last"])
    before, after = expected_array(11, 12), expected_array(12, 12)
    remote = False
    for attempt in range(6):
        key, marker = f"rrbig/{attempt}", f"rrbig/{attempt}-marker"
        other.put(key, before)
        future = client.call_async("rrbig", key, marker, consistency="repeatable_read")

        def marked(marker=marker) -> bool:
            try:
                other.get(marker)
                return True
            except cbctl.NoSuchKey:
                return False

        handle.wait_for(marked, timeout=30, what="the middle step to start")
        other.put(key, after)
        seen = future.result(timeout=60)
        assert [value for _, value in seen] == [digest(before)] * 3, seen
        assert digest(client.get(key)) == digest(after)
        remote = seen[0][0] != seen[2][0]
        if remote:
            break
    assert remote, "the policy never placed the first and last steps apart: the remote fetch went untested"
