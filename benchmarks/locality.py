"""Locality-aware placement: calls of a function reading a 1 MB value by reference (``cbctl.Ref``), with the
policy's locality on and off, side by side.

    python -m benchmarks.locality [--keys 24] [--rounds 8] [--executors 4] [--cache-mb 12] [--value-mb 1]

Each case runs on a fresh cluster whose executors' caches hold only part of the data (``--keys`` values of
``--value-mb`` each, ``--cache-mb`` per executor): one cold pass reads every key once (spreading them over the
executors), then ``--rounds`` passes read them again in random order. With locality on, the scheduler sends
each call to the executor whose cache holds its key (Cloudburst's key_locations); with it off
(``cbctl up --policy locality=false``), calls spread by recent load alone, so every executor ends up reading
every key and its bounded cache keeps missing. The floors, measured in the same run between two processes
with raw pyzmq: a small round trip, and a round trip returning the value (what a miss cannot beat).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
from typing import Any

import cloudpickle
import zmq

import cbctl
from benchmarks._common import print_report, summarize, temp_cluster


def blob_size(cb: Any, blob: bytes) -> int:
    return len(blob)


def _echo_server(address: str, size: int, rounds: int) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.REP)
    sock.bind(address)
    payload = os.urandom(size)
    for _ in range(rounds):
        request = sock.recv()
        sock.send(payload if request == b"value" else b"ok")
    sock.close(linger=1000)
    context.term()


def measure_floors(size: int, rounds: int) -> dict[str, list[float]]:
    """Round trips to another process over ipc: a small reply, and a reply of ``size`` bytes."""
    address = f"ipc:///tmp/cbbench-locality-{os.getpid()}"
    server = multiprocessing.get_context("spawn").Process(target=_echo_server, args=(address, size, 2 * rounds + 2))
    server.start()
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.connect(address)
    samples: dict[str, list[float]] = {"small": [], "value": []}
    try:
        for kind in ("small", "value"):
            sock.send(kind.encode())
            sock.recv()  # warm-up
            for _ in range(rounds):
                started = time.perf_counter()
                sock.send(kind.encode())
                sock.recv()
                samples[kind].append(time.perf_counter() - started)
    finally:
        sock.close(linger=0)
        context.term()
        server.join(10)
        if server.is_alive():
            server.kill()
    return samples


def cache_counters(client: cbctl.Client, newer_than: float) -> dict[str, int]:
    """Cache hits and misses summed over executors, from statuses sent after ``newer_than`` (monotonic)."""
    deadline = time.monotonic() + 10
    while True:
        info = client.cluster_info()
        age_limit = time.monotonic() - newer_than
        executors = info["executors"].values()
        if all(s["status_age_s"] < age_limit for s in executors) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    totals = {"hits": 0, "misses": 0, "evictions": 0}
    for status in executors:
        cache = status["metrics"].get("cache", {})
        for name in totals:
            totals[name] += int(cache.get(name, 0))
    return totals


def wait_for_policy_update(client: cbctl.Client, newer_than: float) -> None:
    """Until the policy has read statuses sent after ``newer_than``: their cached keys are what it uses."""
    cache_counters(client, newer_than)
    seen = client.cluster_info()["policy"]["updates"]
    deadline = time.monotonic() + 10
    while client.cluster_info()["policy"]["updates"] <= seen and time.monotonic() < deadline:
        time.sleep(0.05)


def run_case(locality: bool, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    extra = ["--cache-mb", str(args.cache_mb), "--policy", f"locality={'true' if locality else 'false'}"]
    with temp_cluster(args.executors, extra) as home, cbctl.connect(home) as client:
        client.register(blob_size)
        keys = [f"blob-{i}" for i in range(args.keys)]
        for key in keys:
            client.put(key, os.urandom(int(args.value_mb * 1024 * 1024)))
        for key in keys:  # the cold pass: each key read once, somewhere
            client.call("blob_size", cbctl.Ref(key), timeout=60)
        wait_for_policy_update(client, time.monotonic())
        before = cache_counters(client, 0.0)
        order = [key for _ in range(args.rounds) for key in rng.sample(keys, len(keys))]
        samples = []
        for key in order:
            started = time.perf_counter()
            client.call("blob_size", cbctl.Ref(key), timeout=60)
            samples.append(time.perf_counter() - started)
        after = cache_counters(client, time.monotonic())
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    return {"case": f"locality {'on' if locality else 'off'}", **summarize(samples), "calls": len(samples),
            "cache_hit_pct": round(100 * hits / max(1, hits + misses), 1),
            "evictions": after["evictions"] - before["evictions"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=24, help="distinct values read by reference")
    parser.add_argument("--rounds", type=int, default=8, help="measured passes over the keys")
    parser.add_argument("--executors", type=int, default=4, help="CPU executors per cluster")
    parser.add_argument("--cache-mb", type=int, default=12, help="each executor's cache bound (cbctl up --cache-mb)")
    parser.add_argument("--value-mb", type=float, default=1.0, help="size of each value")
    parser.add_argument("--seed", type=int, default=1, help="seed of the read order")
    args = parser.parse_args(argv)
    if __name__ != "__main__":
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors need not import benchmarks/
    rng = random.Random(args.seed)
    floors = measure_floors(int(args.value_mb * 1024 * 1024), 200)
    rows = [{"case": "floor: raw pyzmq round trip, small reply", **summarize(floors["small"])},
            {"case": f"floor: raw pyzmq round trip, {args.value_mb:g} MB reply", **summarize(floors["value"])}]
    rows += [run_case(True, args, rng), run_case(False, args, rng)]
    on, off = rows[2], rows[3]
    print_report("locality-aware placement: a function reading a value by reference (us)", rows, {
        "keys": args.keys, "value_mb": args.value_mb, "cache_mb": args.cache_mb, "executors": args.executors,
        "rounds": args.rounds, "cpus": os.cpu_count(),
        "speedup_median": round(off["median_us"] / on["median_us"], 2) if on["median_us"] else None})


if __name__ == "__main__":
    main()
