"""Store latency and throughput: ``python -m benchmarks.store``.

Measures get and put (median, p99, ops/s) from one client and from 4 concurrent client processes, each with
its own ``StoreClient``, against a real cluster started in a temporary home. The floor is measured in the
same run: a raw pyzmq DEALER/ROUTER round trip of a msgpack frame of the same shape, served by a process
whose loop does what the store's does minus the store (poll, drain, unpack, pack, reply). The gap between
a store row and its floor row is the store's own cost: lattices, the write-ahead log, the message classes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from benchmarks._common import print_report, summarize, temp_cluster
from cbctl.runtime.cluster import ClusterFile

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
    from cbctl.runtime.store_client import StoreClient

    context = zmq.Context()
    client = StoreClient(context, address, writer_id=f"bench-{seed}")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=5_000, help="round trips per row from one client")
    parser.add_argument("--ops-concurrent", type=int, default=2_000, help="round trips per client, 4 clients")
    parser.add_argument("--durability", choices=["always", "batch", "none"], default="batch")
    args = parser.parse_args(argv)
    if args.ops < 1 or args.ops_concurrent < 1:
        parser.error("--ops and --ops-concurrent must be at least 1")

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
            rows.append({**measure("floor", floor_address, 1, args.ops), "op": "floor"})
            rows.append({**measure("floor", floor_address, 4, args.ops_concurrent), "op": "floor"})
        finally:
            server.kill()
            server.join(5)

    with temp_cluster(executors=1, extra_args=("--durability", args.durability)) as home:
        found = ClusterFile.read(home)
        assert found is not None
        _run_ops("put", found.store_address, KEYS, 0)  # every key the get loops read exists
        for op in ("get", "put"):
            rows.append(measure(op, found.store_address, 1, args.ops))
            rows.append(measure(op, found.store_address, 4, args.ops_concurrent))

    print_report("store", rows, {
        "durability": args.durability, "value_bytes": VALUE_BYTES, "cpus": os.cpu_count(),
        "transport": "ipc", "run_s": round(time.monotonic() - started, 1),
    })


if __name__ == "__main__":
    main()
