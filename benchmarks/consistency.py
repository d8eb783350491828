"""What the consistency modes cost: a 2-function chain whose steps both read one key, under lww,
repeatable_read and causal, side by side; and what the executor cache saves on a ``cb.get``.

Rows:

- ``floor``: raw pyzmq, one message around a ring of three relay processes (4 hops, as a chain call makes:
  client -> scheduler -> executor -> executor -> client), measured in the same run;
- ``chain, reads nothing``: the same DAG called so that its steps touch no state (the lww hot path, which
  must not pay for the consistency machinery);
- ``chain, reads one key``: both steps ``cb.get`` one key, per mode. The key is a last-writer-wins value for
  lww and repeatable_read and a causal value for causal (what those modes are used with). Modes are measured
  in interleaved rounds, shuffled each round, so drift on a busy machine spreads over all of them;
- ``cb.get``: inside a function, the first read of a key (a miss: subscribe + fetch, two store round trips)
  and the reads after it (hits), and ``client.get`` (one store round trip from outside) for reference.

Usage: python -m benchmarks.consistency [--calls 2000] [--keys 200]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from benchmarks._common import print_report, summarize, temp_cluster

MODES = ("lww", "repeatable_read", "causal")
ROUNDS = 20  # interleaved rounds per mode, in a shuffled order each round


# --- the functions (registered by value: this module runs as __main__) -------------------------------------


def step_first(cb, key):
    if key:  # '' reads nothing: the same DAG, placed the same way, without state
        cb.get(key)
    return key


def step_second(cb, key):
    if key:
        cb.get(key)
    return 0


def write_value(cb, key, value):
    cb.put(key, value)


def get_latency(cb, keys, repeats):
    """Microseconds of ``cb.get``: the first read of each key (a miss) and ``repeats`` reads after (hits)."""
    misses, hits = [], []
    for key in keys:
        started = time.perf_counter_ns()
        cb.get(key)
        misses.append((time.perf_counter_ns() - started) / 1000)
        for _ in range(repeats):
            started = time.perf_counter_ns()
            cb.get(key)
            hits.append((time.perf_counter_ns() - started) / 1000)
    return [misses, hits]


# --- the floor ---------------------------------------------------------------------------------------------


def _relay(pull_address: str, push_address: str) -> None:
    context = zmq.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    pull.bind(pull_address)
    push.connect(push_address)
    while True:
        frame = pull.recv()
        if frame == b"stop":
            push.send(frame)
            break
        push.send(frame)
    pull.close(0)
    push.close(0)
    context.term()


def measure_floor(calls: int) -> list[float]:
    """Round trips of one small frame through three relay processes back to the sender (4 hops)."""
    with tempfile.TemporaryDirectory(prefix="cbfloor-") as tmp:
        addresses = [f"ipc://{Path(tmp) / f'hop{i}'}" for i in range(4)]
        spawn = mp.get_context("spawn")
        relays = [spawn.Process(target=_relay, args=(addresses[i], addresses[i + 1]), daemon=True) for i in range(3)]
        for relay in relays:
            relay.start()
        context = zmq.Context()
        push, pull = context.socket(zmq.PUSH), context.socket(zmq.PULL)
        pull.bind(addresses[3])
        push.connect(addresses[0])
        try:
            frame = b"x" * 200  # about a trigger's size
            for _ in range(200):  # warm: connections up, relays scheduled
                push.send(frame)
                pull.recv()
            samples = []
            for _ in range(calls):
                started = time.perf_counter()
                push.send(frame)
                pull.recv()
                samples.append(time.perf_counter() - started)
            push.send(b"stop")
            pull.recv()
        finally:
            push.close(0)
            pull.close(0)
            context.term()
            for relay in relays:
                relay.join(5)
                if relay.is_alive():
                    relay.kill()
        return samples


# --- the cluster -------------------------------------------------------------------------------------------


def time_calls(client, name: str, key: str, mode: str, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        client.call(name, key, consistency=mode, timeout=30)
        samples.append(time.perf_counter() - started)
    return samples


def measure_cluster(calls: int, keys: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    import cbctl

    chains: dict[str, list[float]] = {"noop/lww": [], **{f"read/{mode}": [] for mode in MODES}}
    with temp_cluster(executors=2) as home, cbctl.connect(home) as setup:
        for fn in (step_first, step_second, write_value, get_latency):
            setup.register(fn)
        setup.register_dag("chain", ["step_first", "step_second"])
        setup.put("bench-lww", "x" * 100)
        setup.call("write_value", "bench-causal", "x" * 100, consistency="causal", timeout=30)
        # a client that wrote nothing: its calls carry no session, as a reader's would
        with cbctl.connect(home) as client:
            cases = [("chain", "", "lww", "noop/lww")] + [
                ("chain", "bench-causal" if mode == "causal" else "bench-lww", mode, f"read/{mode}")
                for mode in MODES]
            for name, key, mode, _ in cases:
                time_calls(client, name, key, mode, 200)  # warm: code loaded, keys cached, pins settled
            per_round = max(1, calls // ROUNDS)
            order = random.Random(0)
            for _ in range(ROUNDS):
                for name, key, mode, label in order.sample(cases, len(cases)):  # no case always goes first
                    chains[label] += time_calls(client, name, key, mode, per_round)
            get_keys = [f"bench-get-{i}" for i in range(keys)]
            for key in get_keys:
                setup.put(key, "x" * 100)
            misses, hits = client.call("get_latency", get_keys, 5, timeout=120)
            direct = []
            for key in get_keys:
                started = time.perf_counter()
                client.get(key)
                direct.append(time.perf_counter() - started)
    gets = {"miss": [us / 1e6 for us in misses], "hit": [us / 1e6 for us in hits], "client.get": direct}
    return chains, gets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per mode")
    parser.add_argument("--keys", type=int, default=200, help="keys for the cb.get miss/hit measurement")
    args = parser.parse_args()

    floor = summarize(measure_floor(args.calls))
    chains, gets = measure_cluster(args.calls, args.keys)
    lww = summarize(chains["read/lww"])
    rows: list[dict[str, Any]] = [{"case": "floor: raw pyzmq, 4 hops", **floor}]
    rows.append({"case": "chain, reads nothing (lww)", **summarize(chains["noop/lww"])})
    for mode in MODES:
        stats = summarize(chains[f"read/{mode}"])
        rows.append({"case": f"chain, reads one key ({mode})", **stats,
                     "vs_lww_median": round(stats["median_us"] / lww["median_us"], 3)})
    for label in ("hit", "miss", "client.get"):
        rows.append({"case": f"cb.get {label}" if label != "client.get" else "client.get (store round trip)",
                     **summarize(gets[label])})
    extra = {"calls_per_mode": len(chains["read/lww"]),
             "modes": {mode: summarize(chains[f"read/{mode}"]) for mode in MODES},
             "overhead_vs_lww_median_us": {mode: round(summarize(chains[f"read/{mode}"])["median_us"]
                                                       - lww["median_us"], 1) for mode in MODES}}
    print_report("consistency modes", rows, extra)


if __name__ == "__main__":
    main()
