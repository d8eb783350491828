"""What an executor's metrics cost at 1,000 calls/s, as a fraction of that executor's time (the bar: < 2%).

Two measurements in one run:

- **in process** (exact, quiet): ``ExecutorMetrics.record_call`` as ``Executor.run_next`` calls it, over
  many calls spread across functions and latencies, and one interval's ``report`` (with the
  psutil reading) plus packing it into an ``ExecutorStatus`` frame, after 1,000 calls in that interval. At
  1,000 calls/s with one report per ``STATUS_INTERVAL_S`` the cost per second of executor time is
  ``1000 * per_call + per_report / interval``.
- **live** (the floor of what it is a fraction of): a real 1-executor cluster driven at 1,000 calls/s; the
  executor's own CPU seconds per call (psutil) is what a call costs there, metrics included, and the
  metrics' share of it (per call plus the report's share) is a stricter figure than the share of wall time.

Usage: python -m benchmarks.metrics_overhead [--seconds 3] [--no-cluster]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psutil

from benchmarks._common import print_report, temp_cluster
from cbctl.runtime.defaults import STATUS_INTERVAL_S
from cbctl.runtime.metrics import ExecutorMetrics
from cbctl.runtime.wire.messages import ExecutorStatus

CALLS_PER_S = 1000
FUNCTIONS = 8  # distinct functions sharing the executor (more names: more report work)


class _NoMetrics:
    """The same call shape with nothing behind it: the loop's own cost, subtracted from the measurement."""

    def record_call(self, function: str, in_dag: bool, elapsed_ns: int, ok: bool) -> None:
        pass


def _time_calls(target: Any, names: list[str], elapsed: list[int]) -> float:
    record = target.record_call
    started = time.perf_counter_ns()
    for i, ns in enumerate(elapsed):
        record(names[i & 7], bool(i & 1), ns, True)
    return (time.perf_counter_ns() - started) / len(elapsed)


def per_call_ns(calls: int = 200_000) -> tuple[float, float]:
    """(net, gross) nanoseconds of one ``record_call``: gross includes the Python call itself, net is gross
    minus the same loop calling an empty method (best of 7 each, so other tenants of the machine count
    less). The clock reads around a run are not counted: run_next made them before metrics existed."""
    names = [f"fn{i}" for i in range(FUNCTIONS)]
    elapsed = [30_000 + (i * 7919) % 5_000_000 for i in range(calls)]  # 30 us .. 5 ms: many buckets
    gross = min(_time_calls(ExecutorMetrics("cpu"), names, elapsed) for _ in range(7))
    floor = min(_time_calls(_NoMetrics(), names, elapsed) for _ in range(7))
    return max(0.0, gross - floor), gross


def per_report_ns(calls_per_interval: int = CALLS_PER_S) -> tuple[float, int]:
    metrics = ExecutorMetrics("cpu")
    best, size = float("inf"), 0
    for _ in range(20):
        for i in range(calls_per_interval):
            metrics.record_call(f"fn{i % FUNCTIONS}", False, 50_000 + (i * 7919) % 400_000, True)
        started = time.perf_counter_ns()
        report = metrics.report({})
        frame = ExecutorStatus("executor-0", "ipc://x", "cpu", True, [], report["utilization"], 0, [], 1,
                               report).pack()
        best = min(best, time.perf_counter_ns() - started)
        size = len(frame)
    return best, size


def noop(cb, x):
    return x


def live_cpu_per_call_us(seconds: float) -> dict[str, Any]:
    """Drive a 1-executor cluster at CALLS_PER_S for ``seconds``; the executor's CPU time per call."""
    import cbctl

    with temp_cluster(executors=1) as home, cbctl.connect(home) as client:
        client.register(noop, name="noop")
        client.call("noop", 0, timeout=10)
        found = client.cluster
        executor = psutil.Process(next(p.pid for p in found.processes if p.role == "executor"))
        before = executor.cpu_times()
        started = time.perf_counter()
        batch = CALLS_PER_S // 100  # 10 calls every 10 ms
        made = 0
        while (elapsed := time.perf_counter() - started) < seconds:
            futures = [client.call_async("noop", made + i) for i in range(batch)]
            for future in futures:
                future.result(timeout=10)
            made += batch
            pause = made / CALLS_PER_S - (time.perf_counter() - started)
            if pause > 0:
                time.sleep(pause)
        after = executor.cpu_times()
        cpu_s = (after.user - before.user) + (after.system - before.system)
        return {"calls": made, "seconds": round(elapsed, 2), "rate": round(made / elapsed, 1),
                "cpu_per_call_us": cpu_s / made * 1e6, "executor_cpu_fraction": cpu_s / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the live run")
    parser.add_argument("--no-cluster", action="store_true", help="skip the live run")
    args = parser.parse_args()

    call_ns, gross_ns = per_call_ns()
    report_ns, frame_bytes = per_report_ns()
    cost_per_s_ns = CALLS_PER_S * gross_ns + report_ns / STATUS_INTERVAL_S  # the gross cost: an upper bound
    fraction = cost_per_s_ns / 1e9
    rows: list[dict[str, Any]] = [
        {"case": "record_call, net of the call itself", "ns": call_ns},
        {"case": "record_call, with the Python call", "ns": gross_ns},
        {"case": f"report + pack ({FUNCTIONS} functions, {CALLS_PER_S} calls)", "ns": report_ns,
         "bytes": frame_bytes},
        {"case": f"metrics per second at {CALLS_PER_S} calls/s", "ns": cost_per_s_ns,
         "percent_of_executor": round(fraction * 100, 3)},
    ]
    extra: dict[str, Any] = {"calls_per_s": CALLS_PER_S, "percent_of_executor_time": round(fraction * 100, 3),
                             "limit_percent": 2.0, "ok": fraction < 0.02}
    if not args.no_cluster:
        live = live_cpu_per_call_us(args.seconds)
        metrics_per_call_ns = gross_ns + report_ns / STATUS_INTERVAL_S / CALLS_PER_S
        share = metrics_per_call_ns / 1000 / live["cpu_per_call_us"]
        rows.append({"case": f"live: executor CPU per call at {live['rate']} calls/s",
                     "ns": live["cpu_per_call_us"] * 1000,
                     "percent_of_executor": round(live["executor_cpu_fraction"] * 100, 1)})
        rows.append({"case": "live: metrics share of that CPU", "ns": metrics_per_call_ns,
                     "percent_of_executor": round(share * 100, 3)})
        extra["live"] = live
        extra["percent_of_executor_cpu_per_call"] = round(share * 100, 3)
    print_report("metrics overhead", rows, extra)


if __name__ == "__main__":
    main()
