"""`cbctl up --store redis://...` and `redis+cluster://...`: what `up` checks, what `down` leaves, where the
password goes, read-after-write across executors on every backend, and kill -9 of redis-server under writes.

Every test starts its own redis-server(s) on loopback ports it picks, and stops them."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator

import msgpack
import pytest

from cbctl.runtime.defaults import STORE_RETRY_BUDGET_S
from cbctl.runtime.lattices import new_lww
from cbctl.runtime.redis_store.merge import Merger
from cbctl.runtime.wire.serialization import encode
from tests.conftest import RunningCluster, run_cli
from tests.integration.shared_cluster import DEPLOYABLES
from tests.redis_servers import RedisClusterServers, RedisServer, require_redis

FUNCTIONS = DEPLOYABLES / "redis_store_fns.py"
WRITES = 1000


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def on_redis(start_cluster, redis_server) -> RunningCluster:
    handle = start_cluster(executors=2, extra_args=("--store", redis_server.url))
    handle.redis = redis_server
    return handle


# --- what `cbctl up` checks, what `down` leaves ---------------------------------------------------------------


@pytest.mark.parametrize("extra, expected", [
    (("--maxmemory-policy", "allkeys-lru"), "maxmemory-policy allkeys-lru, which evicts keys"),
    (("--appendonly", "no"), "appendonly no"),
])
def test_up_refuses_a_server_that_would_lose_data(tmp_path, extra, expected):
    require_redis()
    server = RedisServer(tmp_path / "redis", extra=extra).start()
    try:
        refused = run_cli(tmp_path / "home", "up", "--executors", "1", "--store", server.url)
        assert refused.returncode == 1 and expected in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1  # one line: what is wrong and what to do
        assert not (tmp_path / "home" / "cluster.json").exists()
    finally:
        server.stop()


def test_up_without_aof_is_allowed_with_durability_none_and_warns(start_cluster, tmp_path):
    require_redis()
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        handle = start_cluster(executors=1, extra_args=("--store", server.url, "--durability", "none"))
        client = handle.client()
        client.put("k", 1)
        assert client.get("k") == 1
        handle.close_clients()
        assert handle.cli("down", check=True).returncode == 0
    finally:
        server.stop()


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1", "is not HOST:PORT"),
    ("redis://127.0.0.1:1/x", "database 'x' is not a number"),
    ("redis+cluster://127.0.0.1:7000/3", "a Redis Cluster has database 0 only"),
    ("redis://a:1,b:2", "use redis+cluster://"),
    ("mysql://127.0.0.1:3306", "not a Redis URL"),
    ("redis://127.0.0.1:1", "could not reach Redis at redis://127.0.0.1:1"),
])
def test_bad_store_urls_are_refused_in_one_line(tmp_path, url, expected):
    require_redis()
    refused = run_cli(tmp_path / "home", "up", "--executors", "1", "--store", url)
    assert refused.returncode == 1 and expected in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr


def test_down_leaves_redis_running_with_the_data_and_up_finds_it_again(start_cluster, redis_server, tmp_path):
    home = tmp_path / "home"
    handle = start_cluster(executors=1, extra_args=("--store", redis_server.url), home=home)
    handle.cli("deploy", str(FUNCTIONS), check=True)
    client = handle.client()
    client.put("kept", {"a": 1})
    assert json.loads(handle.cli("status", "--json", check=True).stdout)
    handle.close_clients()
    handle.cli("down", check=True)
    assert redis_server.cli("PING").stdout.strip() == "PONG"
    assert redis_server.cli("EXISTS", "cb:kept").stdout.strip() == "1"
    again = start_cluster(executors=1, extra_args=("--store", redis_server.url), home=home)
    client = again.client()
    assert client.get("kept") == {"a": 1}
    assert client.call("bump", "k", 5, timeout=10) == 5  # registrations came back with the data


def test_the_password_stays_out_of_the_cluster_file_status_and_logs(start_cluster, tmp_path):
    require_redis()
    secret = "s3cret-for-this-test"
    server = RedisServer(tmp_path / "redis", password=secret).start()
    try:
        url = f"redis://:{secret}@127.0.0.1:{server.port}"
        handle = start_cluster(executors=1, extra_args=("--store", url))
        client = handle.client()
        client.put("k", "v")
        assert client.get("k") == "v"
        shown = [(handle.home / "cluster.json").read_text(), handle.cli("status", "--json", check=True).stdout,
                 handle.cli("top", "--json", check=True).stdout]
        shown += [p.read_text() for p in (handle.home / "logs").glob("*.log")]
        assert not [text for text in shown if secret in text]
        assert f"redis://:***@127.0.0.1:{server.port}" in shown[0]
        assert (handle.home / "store-url").stat().st_mode & 0o777 == 0o600
        wrong = run_cli(tmp_path / "other", "up", "--executors", "1", "--store",
                        f"redis://:wrong@127.0.0.1:{server.port}")
        assert wrong.returncode == 1 and "refused the credentials" in wrong.stderr and "wrong" not in wrong.stderr
        handle.close_clients()
        handle.cli("down", check=True)
    finally:
        server.stop()


# --- read-your-writes across executors, on every backend -------------------------------------------------------


@pytest.fixture(params=["embedded", "redis", "redis-cluster"])
def any_store(request, start_cluster, tmp_path) -> Iterator[RunningCluster]:
    if request.param == "embedded":
        yield start_cluster(executors=2)
        return
    require_redis()
    servers = (RedisServer(tmp_path / "redis") if request.param == "redis"
               else RedisClusterServers(tmp_path / "redis-cluster")).start()
    try:
        handle = start_cluster(executors=2, extra_args=("--store", servers.url))
        yield handle
        handle.close_clients()
        handle.cli("down", check=True)
    finally:
        servers.stop()


def test_reads_right_after_acknowledged_writes_on_another_executor_are_never_stale(any_store):
    """One executor writes a key 1,000 times; after each acknowledged write another executor reads it: every
    read returns the value just written (the README's read-your-writes rule), on every backend."""
    any_store.cli("deploy", str(FUNCTIONS), check=True)
    client = any_store.client()
    client.put("raw", -1)
    assert client.call("reader", "raw", timeout=10)[1] == -1  # the reader's executor caches the key
    stale, writers, readers = 0, set(), set()
    for i in range(WRITES):
        writers.add(client.call("writer", "raw", i, timeout=10))
        reader, value = client.call("reader", "raw", timeout=10)
        readers.add(reader)
        stale += value != i
    assert len(writers) == 1 and len(readers) == 1 and writers != readers  # two executors, as the test means
    assert stale == 0


# --- faults ----------------------------------------------------------------------------------------------------


def test_kill9_of_redis_under_acknowledged_writes_loses_none_and_calls_resume(on_redis):
    """kill -9 of redis-server (appendfsync everysec) once 300 of 1,000 sequential puts are acknowledged, then a
    restart on the same data: the puts wait and resume, and every acknowledged one is there afterwards."""
    handle, server = on_redis, on_redis.redis
    handle.cli("deploy", str(FUNCTIONS), check=True)
    client = handle.client()
    assert client.call("bump", "before", 1, timeout=10) == 1
    acknowledged: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(WRITES):
                client.put(f"d/{i}", i)
                acknowledged.append(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    calls = [0]
    caller_client = handle.client()

    def call() -> None:  # calls that write through an executor, in flight across the kill
        try:
            while writer.is_alive():
                calls[0] += 1
                assert caller_client.call("bump", "during", calls[0], timeout=STORE_RETRY_BUDGET_S + 10) == calls[0]
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    writer = threading.Thread(target=write)
    caller = threading.Thread(target=call)
    writer.start()
    caller.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 300 and writer.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    server.kill9()
    killed_at = len(acknowledged)
    started = time.monotonic()
    server.start()  # same port, same directory: Redis reloads its AOF
    writer.join(timeout=STORE_RETRY_BUDGET_S + 30)
    assert not writer.is_alive() and not errors, errors
    assert 300 <= killed_at < WRITES and acknowledged == list(range(WRITES))
    caller.join(timeout=STORE_RETRY_BUDGET_S + 30)
    assert not caller.is_alive() and not errors and calls[-1] > 0, errors
    reader = handle.client()  # a new client: nothing of the writer's session helps it
    assert len(reader.list_keys("d/")) == WRITES
    assert all(reader.get(f"d/{i}") == i for i in range(WRITES))
    # calls resume on the restarted Redis: an executor writes and reads back through its cache
    assert reader.call("bump", "after", 2, timeout=STORE_RETRY_BUDGET_S) == 2
    print(f"\nkilled after {killed_at} acknowledged puts; all {WRITES} present; "
          f"{time.monotonic() - started:.2f} s from the restart to the last put")


def test_a_redis_restart_drops_executor_caches(on_redis):
    """A cache that may have missed a push drops itself: after a Redis restart, a key cached before it is read
    again from Redis even by a caller with no session of its own."""
    handle, server = on_redis, on_redis.redis
    handle.cli("deploy", str(FUNCTIONS), check=True)
    writer = handle.client()
    writer.put("cached", "old")
    executor, value = writer.call("reader", "cached", timeout=10)
    assert value == "old"
    server.kill9()
    server.start()
    # written on the restarted server through a connection of the test's own: no cbctl session knows it
    import redis as redis_py

    direct = redis_py.Redis(port=server.port)
    Merger(direct, push="")("cb:cached", msgpack.packb(new_lww(encode("new"), "test").to_wire()))  # no push at all
    direct.close()
    reader = handle.client()
    got = handle.wait_for(lambda: (lambda r: r if r[1] == "new" else None)(reader.call("reader", "cached",
                                                                                         timeout=10)),
                          timeout=10, what="the reader to see the write made without a push")
    assert got[0] == executor


def test_redis_cluster_serves_the_whole_api(start_cluster, tmp_path):
    require_redis()
    servers = RedisClusterServers(tmp_path / "redis-cluster").start()
    try:
        handle = start_cluster(executors=2, extra_args=("--store", servers.url))
        handle.cli("deploy", str(FUNCTIONS), check=True)
        client = handle.client()
        for i in range(50):  # keys on every master
            client.put(f"spread/{i}", i)
        assert sorted(client.list_keys("spread/"), key=lambda k: int(k.split("/")[1])) == [
            f"spread/{i}" for i in range(50)]
        client.delete_key("spread/0")
        assert len(client.list_keys("spread/")) == 49
        assert client.call("bump", "c", 3, timeout=10) == 3
        assert handle.cli("get", "spread/7", check=True).stdout.strip() == "7"
        top = json.loads(handle.cli("top", "--json", check=True).stdout)
        assert top["store"]["backend"] == "redis-cluster" and top["store"]["keys"] >= 50
        handle.close_clients()
        handle.cli("down", check=True)
    finally:
        servers.stop()


def test_resharding_a_redis_cluster_under_writes_loses_none_and_leaves_no_stale_cache(start_cluster, tmp_path):
    """`redis-cli --cluster reshard` moves a third of the slots from one master to another while a client puts
    1,000 keys and an executor holds a key of a moving slot in its cache: every acknowledged put is there
    afterwards, and the cached key shows its last write to a caller with no session of its own."""
    require_redis()
    servers = RedisClusterServers(tmp_path / "redis-cluster").start()
    try:
        handle = start_cluster(executors=2, extra_args=("--store", servers.url))
        handle.cli("deploy", str(FUNCTIONS), check=True)
        client = handle.client()
        source, target = servers.nodes[0], servers.nodes[1]
        ids = {line.split()[1].split("@")[0]: line.split()[0]
               for line in source.cli("CLUSTER", "NODES").stdout.splitlines()}
        # a key in the first 3,000 slots of the source (reshard moves a master's lowest slots first)
        first = int(next(line for line in source.cli("CLUSTER", "NODES").stdout.splitlines()
                         if "myself" in line).split()[8].split("-")[0])
        hot = next(f"hot/{i}" for i in range(10_000)
                   if first <= int(source.cli("CLUSTER", "KEYSLOT", f"cb:hot/{i}").stdout) < first + 3000)
        client.put(hot, -1)
        executor, value = client.call("reader", hot, timeout=10)
        assert value == -1
        acknowledged: list[int] = []
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for i in range(WRITES):
                    client.put(f"r/{i}", i)
                    client.put(hot, i)
                    acknowledged.append(i)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        moved = subprocess.run(
            ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{source.port}",
             "--cluster-from", ids[f"127.0.0.1:{source.port}"], "--cluster-to", ids[f"127.0.0.1:{target.port}"],
             "--cluster-slots", "3000", "--cluster-yes"], capture_output=True, text=True, timeout=120)
        writer.join(timeout=120)
        assert moved.returncode == 0, moved.stdout[-2000:] + moved.stderr
        assert not writer.is_alive() and not errors, errors
        assert acknowledged == list(range(WRITES))
        assert int(target.cli("CLUSTER", "COUNTKEYSINSLOT", source.cli("CLUSTER", "KEYSLOT", f"cb:{hot}")
                              .stdout.strip()).stdout) == 1  # the hot key moved
        reader = handle.client()
        assert len(reader.list_keys("r/")) == WRITES
        assert all(reader.get(f"r/{i}") == i for i in range(WRITES))
        got = handle.wait_for(lambda: (lambda r: r if r[1] == WRITES - 1 else None)(reader.call("reader", hot,
                                                                                                 timeout=10)),
                              timeout=5, what="the cached hot key to show its last write")
        assert got[0] == executor
        handle.close_clients()
        handle.cli("down", check=True)
    finally:
        servers.stop()
