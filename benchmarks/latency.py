"""Call latency and throughput of the DAG call path, next to a raw pyzmq relay measured in the same run.

    python -m benchmarks.latency [--calls 2000] [--throughput-calls 3000] [--executors 2]

Cases, on a fresh cluster in a temporary home:
- ``noop``: one function that returns its argument (client -> scheduler -> executor -> client);
- ``chain``: ``square(increment(x))``, the 2-function DAG (one more hop when the two run apart);
- ``fan``: ``split -> (left, right) -> merge``, a 4-function fan-out/fan-in.
Each gets ``--calls`` sequential calls after a warm-up (median, p99, mean), sequential throughput, and
throughput with 8 and 64 calls in flight (``call_async`` windows). The floor, ``relay``, is the same traffic
with no runtime at all: client PUSH -> relay A -> relay B -> client PULL, each hop a separate process that
unpacks and repacks a msgpack frame, as every cbctl process does. Target on a 2-core machine: the chain's
median within 3x of the relay's and its p99 under 1.5 ms.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq

import cbctl
from benchmarks._common import print_report, summarize, temp_cluster

WARMUP_CALLS = 300
IN_FLIGHT = (8, 64)
#: Target ratio of the chain's median to the relay floor's, and the chain's p99 ceiling in microseconds.
TARGET_RATIO = 3.0
TARGET_P99_US = 1500.0


# --- the floor: a raw 3-hop pyzmq relay ------------------------------------------------------------------


def _relay(pull_address: str, push_address: str) -> None:
    """One relay hop: receive a frame, decode it and encode it again (as a cbctl process would), forward it."""
    context = zmq.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    pull.bind(pull_address)
    push.connect(push_address)
    while True:
        message = msgpack.unpackb(pull.recv())
        if message is None:
            break
        push.send(msgpack.packb(message))
    push.send(msgpack.packb(None))
    context.destroy(linger=1000)


class Relay:
    """Client side of the relay: ``send``/``recv`` one frame through both hops."""

    def __init__(self, directory: Path) -> None:
        addresses = [f"ipc://{directory}/{name}" for name in ("a", "b", "client")]
        mp = multiprocessing.get_context("spawn")
        self.hops = [mp.Process(target=_relay, args=(addresses[0], addresses[1]), daemon=True),
                     mp.Process(target=_relay, args=(addresses[1], addresses[2]), daemon=True)]
        self.context = zmq.Context()
        self.pull = self.context.socket(zmq.PULL)
        self.pull.bind(addresses[2])
        self.push = self.context.socket(zmq.PUSH)
        self.push.connect(addresses[0])
        for hop in self.hops:
            hop.start()

    def call(self, x: int) -> Any:
        self.push.send(msgpack.packb([x, "call"]))
        return msgpack.unpackb(self.pull.recv())[0]

    def send(self, x: int) -> None:
        self.push.send(msgpack.packb([x, "call"]))

    def recv(self) -> Any:
        return msgpack.unpackb(self.pull.recv())[0]

    def close(self) -> None:
        self.push.send(msgpack.packb(None))
        for hop in self.hops:
            hop.join(timeout=5)
            if hop.is_alive():
                hop.kill()
        self.context.destroy(linger=0)


# --- the cluster's functions -----------------------------------------------------------------------------


def noop(cb: Any, x: Any) -> Any:
    return x


def increment(cb: Any, x: int) -> int:
    return x + 1


def square(cb: Any, x: int) -> int:
    return x * x


def split(cb: Any, x: int) -> int:
    return x


def left(cb: Any, x: int) -> int:
    return 2 * x


def right(cb: Any, x: int) -> int:
    return 3 * x


def merge(cb: Any, a: int, b: int) -> int:
    return a + b


CASES: dict[str, Callable[[int], Any]] = {
    "noop": lambda x: x,
    "chain": lambda x: (x + 1) ** 2,
    "fan": lambda x: 5 * x,
}


def deploy(client: cbctl.Client) -> None:
    for fn in (noop, increment, square, split, left, right, merge):
        client.register(fn)
    client.register_dag("chain", [increment, square])
    client.register_dag("fan", [split, left, right, merge],
                        edges=[(split, left), (split, right), (left, merge), (right, merge)])


# --- measuring --------------------------------------------------------------------------------------------


def sequential(call: Callable[[int], Any], expected: Callable[[int], Any], calls: int) -> tuple[list[float], float]:
    """Per-call latencies in seconds, and the wall time of the whole run."""
    for x in range(WARMUP_CALLS):
        call(x)
    samples = []
    started = time.perf_counter()
    for x in range(calls):
        t = time.perf_counter()
        value = call(x)
        samples.append(time.perf_counter() - t)
        if value != expected(x):
            raise AssertionError(f"call({x}) returned {value!r}, expected {expected(x)!r}")
    return samples, time.perf_counter() - started


def windowed(send: Callable[[int], Any], wait: Callable[[Any], Any], expected: Callable[[int], Any],
             calls: int, in_flight: int) -> float:
    """Calls per second with ``in_flight`` calls outstanding (the oldest is waited for before the next send)."""
    window: collections.deque[tuple[int, Any]] = collections.deque()
    started = time.perf_counter()
    for x in range(calls):
        if len(window) >= in_flight:
            sent, handle = window.popleft()
            if wait(handle) != expected(sent):
                raise AssertionError(f"call({sent}) returned a wrong result")
        window.append((x, send(x)))
    while window:
        sent, handle = window.popleft()
        if wait(handle) != expected(sent):
            raise AssertionError(f"call({sent}) returned a wrong result")
    return calls / (time.perf_counter() - started)


def row(case: str, samples: list[float], elapsed: float, rates: dict[int, float], floor_median_us: float | None
        ) -> dict[str, Any]:
    stats = summarize(samples)
    out: dict[str, Any] = {"case": case, **stats, "seq_calls_s": round(len(samples) / elapsed)}
    for n, rate in rates.items():
        out[f"in_flight_{n}_calls_s"] = round(rate)
    out["x_floor"] = round(stats["median_us"] / floor_median_us, 2) if floor_median_us else 1.0
    return out


def measure_relay(calls: int, throughput_calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cbrelay-") as tmp:
        relay = Relay(Path(tmp))
        try:
            relay.call(0)  # connected end to end
            samples, elapsed = sequential(relay.call, lambda x: x, calls)
            # PUSH/PULL keeps order, so the oldest outstanding call's reply is always the next frame
            rates = {n: windowed(relay.send, lambda _handle: relay.recv(), lambda x: x, throughput_calls, n)
                     for n in IN_FLIGHT}
        finally:
            relay.close()
    return row("relay (floor)", samples, elapsed, rates, None)


def measure_cluster(home: Path, calls: int, throughput_calls: int, floor_median_us: float) -> list[dict[str, Any]]:
    rows = []
    with cbctl.connect(home) as client:
        deploy(client)
        for case, expected in CASES.items():
            samples, elapsed = sequential(lambda x, case=case: client.call(case, x, timeout=30), expected, calls)
            rates = {n: windowed(lambda x, case=case: client.call_async(case, x), lambda f: f.result(timeout=30),
                                 expected, throughput_calls, n) for n in IN_FLIGHT}
            rows.append(row(case, samples, elapsed, rates, floor_median_us))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="Sequential calls per case (after warm-up).")
    parser.add_argument("--throughput-calls", type=int, default=3000, help="Calls per in-flight measurement.")
    parser.add_argument("--executors", type=int, default=2, help="Executors of the cluster.")
    args = parser.parse_args(argv)
    if args.calls < 100 or args.throughput_calls < 64 or args.executors < 1:
        parser.error("use --calls >= 100, --throughput-calls >= 64 and --executors >= 1")

    relay = measure_relay(args.calls, args.throughput_calls)
    with temp_cluster(args.executors) as home:
        rows = measure_cluster(home, args.calls, args.throughput_calls, relay["median_us"])
    chain = next(r for r in rows if r["case"] == "chain")
    met = chain["x_floor"] <= TARGET_RATIO and chain["p99_us"] < TARGET_P99_US
    print_report("call latency (us) and throughput (calls/s)", [relay, *rows], {
        "executors": args.executors, "calls": args.calls, "cpus": os.cpu_count(),
        "target": {"chain_x_floor": TARGET_RATIO, "chain_p99_us": TARGET_P99_US}, "target_met": met,
    })


if __name__ == "__main__":
    main()
