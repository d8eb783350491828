"""Intermediate data: a fan-out of 8 map steps, each passing 1 MB to one reducer, through the store durably, through
the store ephemerally, straight along the DAG's edges, and through Ray's object store.

    python -m benchmarks.ephemeral [--rounds 40] [--executors 2] [--only durable,ephemeral,edge,ray]

One round is one call of an 8-source DAG ``map_0 .. map_7 -> reduce``. Each map makes a 1 MB value and hands it
on; the reducer receives the 8 and returns their total length, which the round checks. Cases:
- ``durable``: each map ``cb.put``s its value (the write-ahead log, then the store's memory) and returns a
  ``Ref`` to the key; the reducer's executor resolves the 8 refs from the store (``cb.get``'s path);
- ``ephemeral``: the same with ``cb.put(..., durable=False)``: the store's memory only, no log;
- ``edge``: each map returns its value, which travels in the DAG trigger to the reducer's executor (no store);
- ``ray`` (when Ray is installed: ``pip install -e '.[bench]'``): ``reduce.remote(*[map.remote(i) ...])``, the
  values in Ray's shared-memory object store, 2 worker CPUs as cbctl gets 2 executors.
The floor, ``zmq``, is the least any of them can do: 8 MB sent over one pyzmq hop to another process, which
acknowledges it. cbctl's cases alternate round by round, so a busy moment of the machine hits them alike; Ray
runs after them, alone. Medians and p99 are over the rounds, after warm-up rounds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

import cbctl
from benchmarks._common import percentile, print_report, temp_cluster

MAPS = 8
VALUE_BYTES = 1 << 20
WARMUP_ROUNDS = 5
CASES = ("durable", "ephemeral", "edge", "ray")


# --- the floor -----------------------------------------------------------------------------------------------


def _sink(address: str, ready: Any) -> None:
    """Receive MAPS frames, acknowledge with one small frame; until an empty frame."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.bind(address)
    ready.set()
    while True:
        got = 0
        while got < MAPS:
            identity, frame = sock.recv_multipart()
            if not frame:
                sock.close(linger=0)
                context.term()
                return
            got += len(frame) == VALUE_BYTES
        sock.send_multipart([identity, b"ok"])


class Floor:
    def __init__(self, home: Path) -> None:
        self.address = f"ipc://{home}/floor.sock"
        ready = multiprocessing.get_context("spawn").Event()
        self.process = multiprocessing.get_context("spawn").Process(target=_sink, args=(self.address, ready),
                                                                     daemon=True)
        self.process.start()
        ready.wait(30)
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.connect(self.address)
        self.values = [bytes([i]) * VALUE_BYTES for i in range(MAPS)]

    def round(self) -> None:
        for value in self.values:
            self.sock.send(value, copy=False)
        if not self.sock.poll(30_000):
            raise RuntimeError("the floor's sink did not answer")
        self.sock.recv()

    def close(self) -> None:
        self.sock.send(b"")
        self.process.join(10)
        self.sock.close(linger=0)
        self.context.term()


# --- cbctl ---------------------------------------------------------------------------------------------------


def _make_map(index: int, how: str) -> Callable[..., Any]:
    key = f"bench/{how}/{index}"

    def map_step(cb, seed: int) -> Any:
        value = bytes([(seed + index) % 256]) * VALUE_BYTES
        if how == "edge":
            return value
        cb.put(key, value, durable=how == "durable")
        return cbctl.Ref(key)

    return map_step


def reduce_step(cb, *parts: bytes) -> int:
    return sum(len(part) for part in parts)


def deploy(client: cbctl.Client, how: str) -> str:
    names = [f"map_{how}_{i}" for i in range(MAPS)]
    for i, name in enumerate(names):
        client.register(_make_map(i, how), name=name)
    client.register(reduce_step, name=f"reduce_{how}")
    dag = f"fanout_{how}"
    client.register_dag(dag, [*names, f"reduce_{how}"], [(name, f"reduce_{how}") for name in names])
    return dag


# --- Ray -----------------------------------------------------------------------------------------------------


def ray_rounds(rounds: int) -> list[float] | str:
    """Round latencies on Ray, or why there are none."""
    try:
        import ray
    except ImportError:
        return "not installed (pip install -e '.[bench]')"
    ray.init(num_cpus=2, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        @ray.remote
        def ray_map(index: int, seed: int) -> bytes:
            return bytes([(seed + index) % 256]) * VALUE_BYTES

        @ray.remote
        def ray_reduce(*parts: bytes) -> int:
            return sum(len(part) for part in parts)

        samples = []
        for r in range(WARMUP_ROUNDS + rounds):
            started = time.perf_counter()
            total = ray.get(ray_reduce.remote(*[ray_map.remote(i, r) for i in range(MAPS)]), timeout=60)
            elapsed = time.perf_counter() - started
            if total != MAPS * VALUE_BYTES:
                raise RuntimeError(f"ray's reducer saw {total} bytes")
            if r >= WARMUP_ROUNDS:
                samples.append(elapsed)
        return samples
    finally:
        ray.shutdown()


# --- the run -------------------------------------------------------------------------------------------------


def row(case: str, samples: list[float], note: str = "") -> dict[str, Any]:
    ordered = sorted(samples)
    return {"case": case, "rounds": len(ordered), "median_ms": round(statistics.median(ordered) * 1e3, 2),
            "p99_ms": round(percentile(ordered, 0.99) * 1e3, 2), "mean_ms": round(statistics.fmean(ordered) * 1e3, 2),
            "MB_per_s": round(MAPS * VALUE_BYTES / (1 << 20) / statistics.median(ordered), 1), "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="example: python -m benchmarks.ephemeral --rounds 40")
    parser.add_argument("--rounds", type=int, default=40, help="Measured rounds per case (after 5 warm-up ones).")
    parser.add_argument("--executors", type=int, default=2)
    parser.add_argument("--only", default=",".join(CASES), help=f"Comma-separated cases (default: {','.join(CASES)}).")
    args = parser.parse_args()
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(only) - set(CASES))
    if unknown or args.rounds < 1:
        parser.error(f"unknown cases {unknown}: choose from {', '.join(CASES)}" if unknown else "--rounds must be >= 1")
    cbctl_cases = [c for c in only if c != "ray"]
    samples: dict[str, list[float]] = {c: [] for c in ["zmq", *cbctl_cases]}
    store_stats: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cbbench-floor-") as tmp:
        floor = Floor(Path(tmp))
        with temp_cluster(args.executors) as home, cbctl.connect(home) as client:
            dags = {how: deploy(client, how) for how in cbctl_cases}
            for r in range(WARMUP_ROUNDS + args.rounds):
                started = time.perf_counter()
                floor.round()
                if r >= WARMUP_ROUNDS:
                    samples["zmq"].append(time.perf_counter() - started)
                for how, dag in dags.items():
                    started = time.perf_counter()
                    total = client.call(dag, r, timeout=60)
                    elapsed = time.perf_counter() - started
                    if total != MAPS * VALUE_BYTES:
                        raise RuntimeError(f"{how}: the reducer saw {total} bytes")
                    if r >= WARMUP_ROUNDS:
                        samples[how].append(elapsed)
            stats = client.store_stats()
            store_stats = {k: stats.get(k) for k in ("log_bytes", "bytes", "ephemeral_bytes", "ephemeral_keys")}
        floor.close()
    notes = {"zmq": "floor: 1 pyzmq hop", "durable": "put + Ref, logged", "ephemeral": "put + Ref, memory",
             "edge": "DAG edge, no store"}
    rows = [row(case, values, notes[case]) for case, values in samples.items()]
    ray_result: list[float] | str | None = ray_rounds(args.rounds) if "ray" in only else None
    if isinstance(ray_result, list):
        rows.append(row("ray", ray_result, "ray object store"))
    extra = {"maps": MAPS, "value_bytes": VALUE_BYTES, "executors": args.executors, "cpus": os.cpu_count(),
             "load_1m": round(os.getloadavg()[0], 2), "store_after": store_stats}
    if isinstance(ray_result, str):
        extra["ray"] = ray_result
    print_report("ephemeral: 8 map steps x 1 MB -> 1 reducer", rows, extra)


if __name__ == "__main__":
    main()
