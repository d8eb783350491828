"""Placement under a mixed load: 50 ms calls at about half the cluster's capacity, and no-op calls meanwhile,
for Cloudburst's policy (``cbctl up --policy placement=cloudburst``) and cbctl's default side by side.

    python -m benchmarks.placement [--executors 4] [--seconds 8] [--naps-in-flight 2] [--noop-pause-ms 5]
                                   [--schedulers 1]

Each case runs on a fresh cluster with step records on ($CBCTL_RECORD_STEPS, see cbctl/runtime/step_records.py).
One client keeps ``--naps-in-flight`` calls of a 50 ms function in flight (2 on 4 executors: half the
capacity); another calls a no-op one at a time, ``--noop-pause-ms`` apart. Reported per policy: the no-op's
latency (p50, p99, from the client), the share of calls that waited behind another call on their executor while
another executor sat idle the whole wait (from the executors' own records, not from latencies), and calls per
second. The floor, in the same run and on the same cluster: the no-op with nothing else running.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cloudpickle

import cbctl
from benchmarks._common import percentile, print_report, temp_cluster
from cbctl.runtime import step_records
from cbctl.runtime.cluster import ClusterFile

NAP_S = 0.05
#: Seconds the executors' step records may take to reach their files (they flush on the 1 s status timer).
RECORDS_WAIT_S = 10.0


def nap(cb: Any, x: int) -> int:
    time.sleep(NAP_S)
    return x


def noop(cb: Any, x: int) -> int:
    return x


class MixedLoad:
    """Naps kept ``naps_in_flight`` deep from one client, no-ops one at a time from another, for ``seconds``."""

    def __init__(self, home: Path, naps_in_flight: int, noop_pause_s: float, seconds: float) -> None:
        self.home, self.naps_in_flight, self.noop_pause_s, self.seconds = home, naps_in_flight, noop_pause_s, seconds
        self.noop_latencies: list[float] = []
        self.noop_ids: list[str] = []
        self.nap_ids: list[str] = []
        self.errors: list[str] = []
        self.elapsed_s = 0.0

    def _naps(self, client: cbctl.Client, stop: threading.Event) -> None:
        pending: collections.deque = collections.deque()
        i = 0
        while not stop.is_set() or pending:
            while not stop.is_set() and len(pending) < self.naps_in_flight:
                pending.append(client.call_async("nap", i))
                i += 1
            future = pending.popleft()
            try:
                future.result(timeout=30)
                self.nap_ids.append(future.call_id)
            except Exception as exc:  # noqa: BLE001 - a lost call is what a run must report
                self.errors.append(f"nap: {type(exc).__name__}: {exc}")

    def _noops(self, client: cbctl.Client, stop: threading.Event) -> None:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            future = client.call_async("noop", i)
            try:
                future.result(timeout=30)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"noop: {type(exc).__name__}: {exc}")
            else:
                self.noop_latencies.append(time.perf_counter() - started)
                self.noop_ids.append(future.call_id)
            i += 1
            stop.wait(self.noop_pause_s)

    def run(self) -> MixedLoad:
        stop = threading.Event()
        with cbctl.connect(self.home) as naps, cbctl.connect(self.home) as noops:
            threads = [threading.Thread(target=self._naps, args=(naps, stop), daemon=True),
                       threading.Thread(target=self._noops, args=(noops, stop), daemon=True)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            stop.wait(self.seconds)
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            self.elapsed_s = time.perf_counter() - started
        return self


def records_of(home: Path, call_ids: list[str]) -> list[dict[str, Any]]:
    """Every step record, once those of ``call_ids`` have all been flushed (bounded wait)."""
    wanted = set(call_ids)
    deadline = time.monotonic() + RECORDS_WAIT_S
    while True:
        rows = step_records.read(home)
        if wanted <= {r["call_id"] for r in rows} or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def executor_ids(home: Path) -> list[str]:
    found = ClusterFile.read(home)
    return [f"executor-{p.index}" for p in (found.processes if found else ()) if p.role == "executor"]


def run_case(placement: str, args: argparse.Namespace) -> dict[str, Any]:
    os.environ[step_records.ENV] = "1"
    extra = ["--policy", f"placement={placement}", "--schedulers", str(args.schedulers)]
    with temp_cluster(args.executors, extra) as home, \
            cbctl.connect(home) as client:
        client.register(nap)
        client.register(noop)
        floor = []
        for i in range(200):  # the floor: a no-op on the idle cluster (and a warm-up of both functions)
            started = time.perf_counter()
            client.call("noop", i, timeout=30)
            floor.append(time.perf_counter() - started)
        client.call("nap", 0, timeout=30)
        load = MixedLoad(home, args.naps_in_flight, args.noop_pause_ms / 1000, args.seconds).run()
        rows = records_of(home, load.noop_ids + load.nap_ids)
        measured = set(load.noop_ids) | set(load.nap_ids)
        waited = [w for w in step_records.waited_while_idle(rows, executor_ids(home)) if w["call_id"] in measured]
        waited_noops = [w for w in waited if w["function"] == "noop"]
    latencies = sorted(load.noop_latencies)
    calls = len(load.noop_ids) + len(load.nap_ids)
    return {
        "placement": placement,
        "floor_noop_p50_us": round(statistics.median(floor) * 1e6),
        "noop_p50_us": round(statistics.median(latencies) * 1e6) if latencies else None,
        "noop_p99_us": round(percentile(latencies, 0.99) * 1e6) if latencies else None,
        "waited_while_idle_pct": round(100 * len(waited) / calls, 2) if calls else None,
        "noops_waited_while_idle": len(waited_noops),
        "calls_per_s": round(calls / load.elapsed_s, 1),
        "noops": len(load.noop_ids), "naps": len(load.nap_ids), "errors": len(load.errors),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executors", type=int, default=4, help="CPU executors per cluster")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of mixed load per policy")
    parser.add_argument("--naps-in-flight", type=int, default=2, help="50 ms calls kept in flight (half of 4)")
    parser.add_argument("--noop-pause-ms", type=float, default=5.0, help="pause between no-op calls")
    parser.add_argument("--schedulers", type=int, default=1, help="schedulers (each client picks one at random)")
    args = parser.parse_args(argv)
    if __name__ != "__main__":
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors need not import benchmarks/
    rows = [run_case("cloudburst", args), run_case("outstanding", args)]
    print_report("placement under mixed load: 50 ms calls at half capacity plus no-ops", rows, {
        "executors": args.executors, "seconds": args.seconds, "naps_in_flight": args.naps_in_flight,
        "noop_pause_ms": args.noop_pause_ms, "schedulers": args.schedulers, "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
