"""A bounded soak: a steady rate of 2-function DAG calls for a while, with every cluster process's memory watched.

    python -m benchmarks.soak [--seconds 60] [--rate 1000] [--in-flight 64] [--warmup 10] [--executors 2]

On a fresh cluster in a temporary home (always torn down), one client drives ``soak`` (``square(increment(x))``,
where ``increment`` also writes a store key every ``--write-every`` calls, over a bounded set of keys) at
``--rate`` calls per second with at most ``--in-flight`` outstanding. Every second it samples the resident memory
(RSS) of the supervisor and each of its children. It reports, per process, the RSS once warm (after ``--warmup``
s), halfway to the end, at the end, and the growth from warm to end (growth that stops by halfway is warm-up,
growth that goes on is a leak); and for the calls: sent, answered, lost (no answer within ``--call-timeout`` s,
or none at the end), errors (an exception or a wrong value), the achieved rate and the latency p50/p99 (send
to answer, as the driver saw it). It measures stability, not speed: ``benchmarks.latency`` measures the call
path against its raw pyzmq floor.

Exit status 1 when a criterion fails: a lost call, an error, an achieved rate below 98% of ``--rate``, or a
process whose RSS grew by more than ``--max-growth`` percent after warm-up.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

import cbctl
from benchmarks._common import percentile, print_report, temp_cluster
from cbctl.runtime.cluster import ClusterFile

KEYS = 64  # distinct keys the calls write: the store's data stays the same size however long the soak runs
RATE_TOLERANCE = 0.98  # achieved / asked: the pacer sends on a schedule, so a healthy run is within 2%


def increment(cb: Any, x: int, write_every: int) -> int:
    if write_every and x % write_every == 0:
        cb.put(f"soak/{x % KEYS}", x)
    return x + 1


def square(cb: Any, x: int) -> int:
    return x * x


class MemoryWatch:
    """RSS of every process of the cluster, sampled once a second, by process name."""

    def __init__(self, home: Path) -> None:
        found = ClusterFile.read(home)
        assert found is not None, "cluster file missing"
        self.processes = {"supervisor": psutil.Process(found.supervisor_pid)}
        for entry in found.processes:
            self.processes[f"{entry.role}-{entry.index}"] = psutil.Process(entry.pid)
        self.samples: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
        self.next_sample = 0.0

    def maybe_sample(self, now: float, elapsed: float) -> None:
        if now < self.next_sample:
            return
        self.next_sample = now + 1.0
        for name, proc in self.processes.items():
            try:
                self.samples[name].append((elapsed, proc.memory_info().rss))
            except psutil.Error:
                self.samples[name].append((elapsed, 0))  # gone: shows as a crash, not as a stable process

    def rows(self, warmup_s: float) -> list[dict[str, Any]]:
        rows = []
        for name, samples in self.samples.items():
            warm = next((rss for t, rss in samples if t >= warmup_s), samples[-1][1])
            # halfway between warm-up and the end: growth that stops early is warm-up, growth that goes on is a leak
            mid_s = (warmup_s + samples[-1][0]) / 2
            mid = next((rss for t, rss in samples if t >= mid_s), samples[-1][1])
            end = samples[-1][1]
            growth = (end - warm) / warm * 100 if warm else float("inf")
            peak = max(rss for _, rss in samples)
            rows.append({"name": name, "pid": self.processes[name].pid, "rss_warm_mb": round(warm / 2**20, 1),
                         "rss_mid_mb": round(mid / 2**20, 1), "rss_end_mb": round(end / 2**20, 1),
                         "rss_peak_mb": round(peak / 2**20, 1),
                         "growth_pct": round(growth, 2)})
        return rows


def soak(client: cbctl.Client, watch: MemoryWatch, seconds: float, rate: float, in_flight: int,
         call_timeout_s: float, write_every: int) -> dict[str, Any]:
    """Drive the calls; return the call figures."""
    window: collections.deque[tuple[int, float, Any]] = collections.deque()
    latencies: list[float] = []
    sent = answered = errors = lost = 0
    first_error = ""
    interval = 1.0 / rate
    started = time.monotonic()
    end = started + seconds
    next_send = started
    while True:
        now = time.monotonic()
        watch.maybe_sample(now, now - started)
        while now < end and len(window) < in_flight and next_send <= now:
            window.append((sent, time.monotonic(), client.call_async("soak", sent, write_every)))
            sent += 1
            next_send += interval
        if not window:
            if now >= end:
                break
            time.sleep(max(0.0, min(next_send, end) - now))
            continue
        x, sent_at, future = window[0]
        wait = max(0.0, min(next_send - now, 0.01)) if now < end else 0.05
        try:
            value = future.result(timeout=wait)
        except cbctl.CallTimeout:
            if time.monotonic() - sent_at > call_timeout_s:
                window.popleft()
                lost += 1
                first_error = first_error or f"call {x} not answered within {call_timeout_s} s"
            continue
        except cbctl.CbctlError as exc:
            window.popleft()
            errors += 1
            first_error = first_error or f"call {x}: {type(exc).__name__}: {exc}"
            continue
        window.popleft()
        answered += 1
        latencies.append(time.monotonic() - sent_at)
        if value != (x + 1) ** 2:
            errors += 1
            first_error = first_error or f"call {x} returned {value!r}, expected {(x + 1) ** 2}"
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "sent": sent, "answered": answered, "lost": lost, "errors": errors, "first_error": first_error,
        "seconds": round(elapsed, 1), "achieved_per_s": round(answered / seconds, 1),
        "p50_us": round(percentile(latencies, 0.5) * 1e6, 1) if latencies else None,
        "p99_us": round(percentile(latencies, 0.99) * 1e6, 1) if latencies else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="How long to drive calls.")
    parser.add_argument("--rate", type=float, default=1000.0, help="Calls per second to send.")
    parser.add_argument("--in-flight", type=int, default=64, help="Most calls outstanding at once.")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="Seconds after which RSS counts as warm (growth is measured from there).")
    parser.add_argument("--executors", type=int, default=2, help="Executors of the cluster.")
    parser.add_argument("--write-every", type=int, default=10,
                        help="Every Nth call also writes a store key (0: never).")
    parser.add_argument("--call-timeout", type=float, default=10.0, help="Seconds after which a call is lost.")
    parser.add_argument("--max-growth", type=float, default=10.0, help="Most RSS growth after warm-up, percent.")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0 or args.in_flight < 1 or args.executors < 1 or args.write_every < 0:
        parser.error("use --seconds > 0, --rate > 0, --in-flight >= 1, --executors >= 1, --write-every >= 0")
    if not 0 <= args.warmup < args.seconds:
        parser.error("--warmup must be at least 0 and below --seconds")

    with temp_cluster(args.executors) as home, cbctl.connect(home) as client:
        client.register(increment)
        client.register(square)
        client.register_dag("soak", [increment, square])
        client.call("soak", 1, 0, timeout=30)  # deployed and pinned before the clock starts
        watch = MemoryWatch(home)
        calls = soak(client, watch, args.seconds, args.rate, args.in_flight, args.call_timeout, args.write_every)
        store = client.store_stats()
    rows = watch.rows(args.warmup)
    failures = []
    if calls["lost"]:
        failures.append(f"{calls['lost']} calls lost")
    if calls["errors"]:
        failures.append(f"{calls['errors']} errors (first: {calls['first_error']})")
    if calls["achieved_per_s"] < RATE_TOLERANCE * args.rate:
        failures.append(f"achieved {calls['achieved_per_s']} calls/s, below {RATE_TOLERANCE:.0%} of {args.rate:g}")
    failures += [f"{r['name']} RSS grew {r['growth_pct']}% after warm-up" for r in rows
                 if not r["growth_pct"] <= args.max_growth]
    columns = ("sent", "answered", "lost", "errors", "achieved_per_s", "p50_us", "p99_us")
    table = Table(title=f"soak: calls over {calls['seconds']} s")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(*("" if calls[c] is None else f"{calls[c]:,}" for c in columns))
    Console().print(table)
    print_report("soak: RSS per process (MB)", rows, {
        "calls": calls, "processes": rows, "store_keys": store["keys"], "cpus": os.cpu_count(),
        "settings": {k: v for k, v in vars(args).items()}, "failures": failures, "passed": not failures,
    })
    if failures:
        print("soak failed: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
