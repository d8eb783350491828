"""Call latency and throughput of the DAG call path, next to a raw pyzmq relay measured in the same run.

    python -m benchmarks.latency [--calls 2000] [--throughput-calls 3000] [--rounds 10] [--executors 2]
                                 [--listen tcp://127.0.0.1 [--no-auth]] [--store redis://HOST:PORT]
                                 [--policy placement=cloudburst]

Cases, on a fresh cluster in a temporary home:
- ``noop``: one function that returns its argument (client -> scheduler -> executor -> client);
- ``chain``: ``square(increment(x))``, the 2-function DAG: 3 hops, as the relay's, since ``square`` runs on the
  executor of ``increment`` when it is free (``placement.py``); one hop more when the two run apart (under
  load, or with ``--policy placement=cloudburst``);
- ``fan``: ``split -> (left, right) -> merge``, a 4-function fan-out/fan-in.
Each gets ``--calls`` sequential calls after a warm-up (median, p99, mean), sequential throughput, and
throughput with 8 and 64 calls in flight (``call_async`` windows). The floor, ``relay``, is the same traffic
with no runtime at all: client PUSH -> relay A -> relay B -> client PULL, each hop a separate process that
unpacks and repacks a msgpack frame, as every cbctl process does. Relay and case calls alternate in blocks
(``--rounds``), because the floor itself moves by about 2x between a busy and an idle machine (an idle
virtual CPU is slow to wake). Targets on a 2-core machine (the JSON line's ``target_met`` says which were
met): the chain's median within 2x of the relay's and its p99 within 2.5x of the relay's p99; 4,000 chain calls
a second one at a time and 30,000 with 64 in flight.

``--listen`` runs the cluster on TCP (CURVE-authenticated, as `cbctl up --listen` does; ``--no-auth`` for plain
TCP), to price authentication: compare the cases' medians of two runs, each against its own relay floor.

``--hosts 2`` (root only) prices crossing machines: it builds two hosts of network and pid namespaces joined by
a veth link (``tests/hosts/netns.py``), runs the head (client, scheduler, store, one fake GPU executor that no
case uses) on one and ``cbctl join``s ``--executors`` CPU executors from the other, so every function runs on
the second host and each call crosses the link twice (scheduler -> first function, sink -> client). The relay
floor crosses the same link the same way: client (head) -> relay A -> relay B (both on the other host) ->
client, over plain TCP (the cluster's TCP is CURVE: the difference includes authentication).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import sys
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
#: Targets on a 2-core machine: the chain's median and p99 over the relay floor's, and its calls/s one at a time
#: and with 64 in flight.
TARGET_RATIO = 2.0
TARGET_P99_RATIO = 2.5
TARGET_SEQUENTIAL_PER_S = 4000
TARGET_IN_FLIGHT_PER_S = 30000


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
    """Client side of the relay: ``send``/``recv`` one frame through both hops. Without ``hops`` (their first
    PULL address and this client's own), it starts both hops here over ipc in ``directory``."""

    def __init__(self, directory: Path, hops: tuple[str, str] | None = None) -> None:
        if hops is None:
            addresses = [f"ipc://{directory}/{name}" for name in ("a", "b", "client")]
            mp = multiprocessing.get_context("spawn")
            self.hops = [mp.Process(target=_relay, args=(addresses[0], addresses[1]), daemon=True),
                         mp.Process(target=_relay, args=(addresses[1], addresses[2]), daemon=True)]
        else:
            addresses, self.hops = [hops[0], "", hops[1]], []  # hops run elsewhere (another host)
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


def timed(call: Callable[[int], Any], expected: Callable[[int], Any], xs: range) -> tuple[list[float], float]:
    """Per-call latencies in seconds of sequential calls, and the wall time of the block."""
    samples = []
    started = time.perf_counter()
    for x in xs:
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


class Measured:
    """One row's raw numbers: sequential latencies (s), their wall time (s), calls/s per window size."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.elapsed = 0.0
        self.rates: dict[int, float] = {}

    def add(self, block: tuple[list[float], float]) -> None:
        self.samples += block[0]
        self.elapsed += block[1]

    def row(self, case: str, floor_median_us: float | None) -> dict[str, Any]:
        stats = summarize(self.samples)
        out: dict[str, Any] = {"case": case, **stats, "seq_per_s": round(len(self.samples) / self.elapsed)}
        for n, rate in self.rates.items():
            out[f"{n}_in_flight_per_s"] = round(rate)
        out["x_floor"] = round(stats["median_us"] / floor_median_us, 2) if floor_median_us else 1.0
        return out


def measure(relay: Relay, client: cbctl.Client, calls: int, throughput_calls: int, rounds: int
            ) -> tuple[Measured, dict[str, Measured]]:
    """Sequential latencies in ``rounds`` alternating blocks (relay, case, relay, case, ...), so that the
    floor and the cases see the same machine: on a shared or power-managed machine the floor alone moves by
    2x between quiet and busy moments. Then the in-flight rates, case by case."""
    floor, cases = Measured(), {case: Measured() for case in CASES}
    calls_of = {case: (lambda x, case=case: client.call(case, x, timeout=30)) for case in CASES}
    for case, call in calls_of.items():
        timed(call, CASES[case], range(WARMUP_CALLS))
    timed(relay.call, lambda x: x, range(WARMUP_CALLS))
    block = max(1, calls // rounds)
    for r in range(rounds):
        xs = range(r * block, (r + 1) * block)
        for case, call in calls_of.items():
            floor.add(timed(relay.call, lambda x: x, xs))
            cases[case].add(timed(call, CASES[case], xs))
    # PUSH/PULL keeps order, so the oldest outstanding relay call's reply is always the next frame
    floor.rates = {n: windowed(relay.send, lambda _handle: relay.recv(), lambda x: x, throughput_calls, n)
                   for n in IN_FLIGHT}
    for case in CASES:
        cases[case].rates = {
            n: windowed(lambda x, case=case: client.call_async(case, x), lambda f: f.result(timeout=30),
                        CASES[case], throughput_calls, n) for n in IN_FLIGHT}
    return floor, cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="Sequential calls per case (after warm-up).")
    parser.add_argument("--throughput-calls", type=int, default=3000, help="Calls per in-flight measurement.")
    parser.add_argument("--rounds", type=int, default=10, help="Alternating relay/case blocks per case.")
    parser.add_argument("--executors", type=int, default=2, help="Executors of the cluster.")
    parser.add_argument("--listen", default="", help="Run the cluster on TCP (e.g. tcp://127.0.0.1), not ipc.")
    parser.add_argument("--no-auth", action="store_true", help="With --listen: plain TCP, without CURVE.")
    parser.add_argument("--store", default="", help="The cluster's store: a redis:// or redis+cluster:// URL "
                                                    "(default: the embedded store).")
    parser.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                        help="A `cbctl up --policy` option for the cluster (repeatable), e.g. placement=cloudburst.")
    parser.add_argument("--hosts", type=int, choices=(1, 2), default=1,
                        help="2: executors on a second host of network namespaces (root only; see above).")
    parser.add_argument("--in-lab", nargs=3, metavar=("HOME", "RELAY", "REPLY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls < 100 or args.throughput_calls < 64 or args.executors < 1 or not 1 <= args.rounds <= args.calls:
        parser.error("use --calls >= 100, --throughput-calls >= 64, --executors >= 1, 1 <= --rounds <= --calls")
    if args.hosts == 2:
        from benchmarks.across_hosts import run_across_hosts

        run_across_hosts(args, sys.argv[1:] if argv is None else argv)
        return
    if args.in_lab:  # the measuring half of --hosts 2, run inside the head's namespaces
        home, relay_in, reply = args.in_lab
        with cbctl.connect(home) as client:
            deploy(client)
            relay = Relay(Path(home), (relay_in, reply))
            try:
                relay.call(0)
                floor, cases = measure(relay, client, args.calls, args.throughput_calls, args.rounds)
            finally:
                relay.close()
        args.hosts = 2
        report(args, floor, cases, "2 hosts: tcp+curve across a veth link (relay: plain tcp)")
        return

    cluster_args = (["--listen", args.listen] if args.listen else []) + (["--no-auth"] if args.no_auth else [])
    cluster_args += ["--store", args.store] if args.store else []
    for option in args.policy:
        cluster_args += ["--policy", option]
    with tempfile.TemporaryDirectory(prefix="cbrelay-") as tmp, temp_cluster(args.executors, cluster_args) as home, \
            cbctl.connect(home) as client:
        deploy(client)
        relay = Relay(Path(tmp))
        try:
            relay.call(0)  # connected end to end
            floor, cases = measure(relay, client, args.calls, args.throughput_calls, args.rounds)
        finally:
            relay.close()
    report(args, floor, cases,
           f"{args.listen} ({'plain' if args.no_auth else 'curve'})" if args.listen else "ipc")


def report(args: argparse.Namespace, floor: Measured, cases: dict[str, Measured], transport: str) -> None:
    floor_row = floor.row("relay (floor)", None)
    rows = [measured.row(case, floor_row["median_us"]) for case, measured in cases.items()]
    chain = next(r for r in rows if r["case"] == "chain")
    p99_ratio = round(chain["p99_us"] / floor_row["p99_us"], 2)
    met = {"chain_x_floor": chain["x_floor"] <= TARGET_RATIO, "chain_p99_x_floor_p99": p99_ratio <= TARGET_P99_RATIO,
           "chain_seq_per_s": chain["seq_per_s"] >= TARGET_SEQUENTIAL_PER_S,
           "chain_64_in_flight_per_s": chain["64_in_flight_per_s"] >= TARGET_IN_FLIGHT_PER_S}
    print_report("call latency (us) and throughput (calls/s)", [floor_row, *rows], {
        "executors": args.executors, "calls": args.calls, "cpus": os.cpu_count(), "hosts": args.hosts,
        "store": args.store.split("@")[-1] if args.store else "embedded",
        "transport": transport, "policy": args.policy, "chain_p99_x_floor_p99": p99_ratio,
        "target": {"chain_x_floor": TARGET_RATIO, "chain_p99_x_floor_p99": TARGET_P99_RATIO,
                   "chain_seq_per_s": TARGET_SEQUENTIAL_PER_S, "chain_64_in_flight_per_s": TARGET_IN_FLIGHT_PER_S},
        "target_met": met,
    })


if __name__ == "__main__":
    main()
