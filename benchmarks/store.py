"""Store latency and throughput: ``python -m benchmarks.store [--store embedded,redis,redis-cluster]``.

Measures get and put (median, p99, ops/s) from one client and from 4 concurrent client processes, each with
its own store client, and the 2-function chain whose first step reads a key (``cb.get``, a cache hit after the
first call), against a real cluster started in a temporary home, once per store backend named by ``--store``:
``embedded`` (the store process), ``redis`` (a redis-server, AOF everysec), ``redis-cluster`` (3 masters, AOF
everysec) - those two started by the benchmark on loopback ports and stopped after - or a ``redis://`` /
``redis+cluster://`` URL of a server of yours. The floor is measured in the same run: a raw pyzmq DEALER/ROUTER
round trip of a msgpack frame of the same shape, served by a process whose loop does what the store's does minus
the store (poll, drain, unpack, pack, reply). The gap between a store row and its floor row is the store's own
cost: lattices, the write-ahead log (or Redis and its Lua merge), the message classes.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import zmq

from benchmarks._common import print_report, summarize, temp_cluster
from cbctl.runtime.cluster import ClusterFile
from cbctl.runtime.redis_store.url import resolve_address

VALUE_BYTES = 100
KEYS = 1_000  # distinct keys the get and put loops cycle over


def _floor_server(address: str, ready: Any) -> None:
    """A ROUTER that answers every frame with a reply frame, in the store's loop shape."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    ready.set()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        if not poller.poll(100):
            continue
        while True:
            try:
                identity, frame = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            request = msgpack.unpackb(frame, raw=False)
            if request == "stop":
                return
            sock.send_multipart([identity, msgpack.packb([1, 16, request[2]])])


def _run_ops(op: str, address: str, ops: int, seed: int) -> list[float]:
    """``ops`` closed-loop round trips of ``op`` (floor, get, put); returns per-op latencies in seconds."""
    value = "v" * VALUE_BYTES
    keys = [f"bench/{(seed * 7919 + i) % KEYS:05d}" for i in range(ops)]
    samples = []
    clock = time.perf_counter
    if op == "floor":
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        try:
            for i, key in enumerate(keys):
                started = clock()
                sock.send(msgpack.packb([1, 12, i, key, ["lww", i, "bench", value.encode(), False]]))
                msgpack.unpackb(sock.recv(), raw=False)
                samples.append(clock() - started)
        finally:
            sock.close()
            context.term()
        return samples
    from cbctl.runtime.stores import connect_store

    context = zmq.Context()
    client = connect_store(context, address, writer_id=f"bench-{seed}")
    try:
        if op == "get":
            for key in keys:
                started = clock()
                client.get(key)
                samples.append(clock() - started)
        else:
            for key in keys:
                started = clock()
                client.put(key, value)
                samples.append(clock() - started)
    finally:
        client.close()
        context.term()
    return samples


def _worker(op: str, address: str, ops: int, seed: int, barrier: Any, results: Any) -> None:
    _run_ops(op, address, 50, seed)  # warm up connections and imports before the clock starts
    barrier.wait()
    started = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes on one machine
    samples = _run_ops(op, address, ops, seed)
    results.put((samples, started, time.monotonic()))


def measure(op: str, address: str, clients: int, ops_per_client: int) -> dict[str, Any]:
    """One row: ``clients`` closed-loop clients doing ``ops_per_client`` ops each."""
    if clients == 1:
        _run_ops(op, address, 200, 0)  # warm-up
        started = time.monotonic()
        samples = _run_ops(op, address, ops_per_client, 0)
        wall = time.monotonic() - started
    else:
        mp = multiprocessing.get_context("spawn")
        barrier, results = mp.Barrier(clients), mp.Queue()
        procs = [mp.Process(target=_worker, args=(op, address, ops_per_client, i + 1, barrier, results))
                 for i in range(clients)]
        for proc in procs:
            proc.start()
        try:
            outcomes = [results.get(timeout=120) for _ in procs]
        finally:
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
        samples = [s for outcome in outcomes for s in outcome[0]]
        wall = max(o[2] for o in outcomes) - min(o[1] for o in outcomes)
    return {"op": op, "clients": clients, "ops": len(samples), **summarize(samples),
            "ops_per_s": round(len(samples) / wall)}


@contextlib.contextmanager
def store_args(backend: str, directory: Path) -> Iterator[tuple[str, ...]]:
    """``cbctl up`` arguments for ``backend``, with the Redis server(s) it names started for the run."""
    if backend == "embedded":
        yield ()
        return
    if "://" in backend:
        yield ("--store", backend)
        return
    from tests.redis_servers import RedisClusterServers, RedisServer

    servers = (RedisServer(directory) if backend == "redis" else RedisClusterServers(directory)).start()
    try:
        yield ("--store", servers.url)
    finally:
        servers.stop()


def read_then_square(cb: Any, x: int) -> int:
    return x + len(cb.get("bench/state"))


def square(cb: Any, x: int) -> int:
    return x * x


def measure_chain(home: Path, calls: int) -> dict[str, Any]:
    """The 2-function chain whose first step reads a key, sequential calls (the key stays cached)."""
    import cbctl

    with cbctl.connect(home) as client:
        client.put("bench/state", "v" * VALUE_BYTES)
        client.register(read_then_square)
        client.register(square)
        client.register_dag("state_chain", [read_then_square, square])
        for x in range(200):  # warm-up
            client.call("state_chain", x, timeout=30)
        samples = []
        started = time.monotonic()
        for x in range(calls):
            begun = time.perf_counter()
            assert client.call("state_chain", x, timeout=30) == (x + VALUE_BYTES) ** 2
            samples.append(time.perf_counter() - begun)
        wall = time.monotonic() - started
    return {"op": "chain+get", "clients": 1, "ops": calls, **summarize(samples), "ops_per_s": round(calls / wall)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=5_000, help="round trips per row from one client")
    parser.add_argument("--ops-concurrent", type=int, default=2_000, help="round trips per client, 4 clients")
    parser.add_argument("--chain-calls", type=int, default=1_000, help="calls of the chain with a state read")
    parser.add_argument("--durability", choices=["always", "batch", "none"], default="batch")
    parser.add_argument("--store", default="embedded",
                        help="comma-separated backends: embedded, redis, redis-cluster, or a redis:// URL")
    args = parser.parse_args(argv)
    if args.ops < 1 or args.ops_concurrent < 1 or args.chain_calls < 1:
        parser.error("--ops, --ops-concurrent and --chain-calls must be at least 1")
    backends = [b.strip() for b in args.store.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("embedded", "redis", "redis-cluster") and "://" not in backend:
            parser.error(f"--store {backend!r}: use embedded, redis, redis-cluster or a redis:// URL")

    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    mp = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="cbfloor-") as tmp:
        floor_address = f"ipc://{Path(tmp) / 'floor'}"
        ready = mp.Event()
        server = mp.Process(target=_floor_server, args=(floor_address, ready), daemon=True)
        server.start()
        try:
            if not ready.wait(30):
                raise RuntimeError("the floor server did not start")
            rows.append({"store": "-", **measure("floor", floor_address, 1, args.ops), "op": "floor"})
            rows.append({"store": "-", **measure("floor", floor_address, 4, args.ops_concurrent), "op": "floor"})
        finally:
            server.kill()
            server.join(5)

    for backend in backends:
        shown = backend.split("@")[-1] if "://" in backend else backend  # never print a password
        with tempfile.TemporaryDirectory(prefix="cbredis-") as tmp, store_args(backend, Path(tmp)) as extra, \
                temp_cluster(executors=2, extra_args=("--durability", args.durability, *extra)) as home:
            found = ClusterFile.read(home)
            assert found is not None
            address = resolve_address(home, found.store_address)
            _run_ops("put", address, KEYS, 0)  # every key the get loops read exists
            for op in ("get", "put"):
                rows.append({"store": shown, **measure(op, address, 1, args.ops)})
                rows.append({"store": shown, **measure(op, address, 4, args.ops_concurrent)})
            rows.append({"store": shown, **measure_chain(home, args.chain_calls)})

    print_report("store", rows, {
        "durability": args.durability, "value_bytes": VALUE_BYTES, "cpus": os.cpu_count(),
        "transport": "ipc (embedded), TCP loopback (Redis)", "load_avg": os.getloadavg(),
        "run_s": round(time.monotonic() - started, 1),
    })


if __name__ == "__main__":
    main()
