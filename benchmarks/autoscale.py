"""Autoscaling under a step load: idle, a burst of 50 ms calls well above one executor's capacity, idle again;
on an autoscaled cluster (MIN:MAX) and on fixed clusters of MIN and of MAX executors.

    python -m benchmarks.autoscale [--min 1] [--max 4] [--rate 40] [--idle 5] [--burst 15] [--after 60]
                                   [--policy autoscale_NAME=VALUE ...] [--zero-rounds 5] [--plot FILE.png]

The load is open-loop: calls are sent on a fixed schedule (``--rate`` calls/s during the burst, none while idle),
whatever the cluster's answers, so a cluster short of executors queues them, as a real burst would. Each call
sleeps 50 ms (one executor serves 20/s). Per case: calls/s (calls / the time from the first call sent to the last
result), p50/p99 of call latency (sent to result), executor-seconds (CPU executors running, integrated over the
case's whole duration, sampled every 0.25 s from the supervisor) and the most executors at once; the autoscaled
case also the decisions it made. Then, on a cluster with MIN 0: the first call's latency from zero executors
(the cluster scaled to zero, one call: parked, an executor started, placed once it reports), ``--zero-rounds``
times, next to a warm call's. The floor of a call is its 50 ms of sleep: the fixed-MAX cluster shows what
queueing costs least with MAX executors.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import cbctl
from benchmarks._common import percentile, print_report, temp_cluster

WORK_S = 0.05
FUNCTION = f'''
import time
import cbctl

@cbctl.function
def work(cb, x):
    time.sleep({WORK_S!r})
    return x
'''


def run_case(home: Path, args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The step load on the cluster in ``home``; the row, and the timelines for the plot."""
    with cbctl.connect(home) as client:
        client.call("work", 0, timeout=60)  # loaded and warm before the clock starts
        start = time.monotonic()
        burst_at, burst_end = start + args.idle, start + args.idle + args.burst
        end = burst_end + args.after
        calls = int(args.rate * args.burst)
        schedule = [burst_at + i / args.rate for i in range(calls)]
        pending: dict[int, tuple[float, Any]] = {}
        latencies: list[tuple[float, float]] = []  # (sent, seconds)
        executors: list[tuple[float, int, int]] = []  # (t, running, target)
        next_sample, sent, last_result = start, 0, start
        while time.monotonic() < end or pending:
            now = time.monotonic()
            while sent < calls and schedule[sent] <= now:
                pending[sent] = (now, client.call_async("work", sent))
                sent += 1
            for index, (at, future) in list(pending.items()):
                if future.done():
                    assert future.result(0) == index
                    last_result = time.monotonic()
                    latencies.append((at - start, last_result - at))
                    del pending[index]
            if now >= next_sample:
                next_sample = now + 0.25
                state = client.supervisor_status()
                running = sum(1 for p in state["processes"] if p["role"] == "executor" and p["state"] == "ready")
                executors.append((now - start, running, (state.get("autoscale") or {}).get("target", running)))
            time.sleep(0.001)
        total = time.monotonic() - start
        scaling = client.supervisor_status()["autoscale"]
    ordered = sorted(s for _, s in latencies)
    executor_s = sum(count * (min(t2, total) - t1) for (t1, count, _), (t2, _, _) in
                     zip(executors, executors[1:] + [(total, 0, 0)]))
    row = {"case": name, "calls": len(latencies),
           "calls_per_s": round(len(latencies) / (last_result - start - args.idle), 1),
           "p50_ms": round(percentile(ordered, 0.50) * 1000, 1), "p99_ms": round(percentile(ordered, 0.99) * 1000, 1),
           "executor_s": round(executor_s, 1), "max_executors": max(c for _, c, _ in executors),
           "scale_ups": scaling.get("scale_ups", 0), "scale_downs": scaling.get("scale_downs", 0)}
    return {"row": row, "executors": executors, "latencies": latencies}


def first_call_from_zero(args: argparse.Namespace) -> dict[str, Any]:
    """On a 0:MAX cluster: wait until it runs no executor, time one call; ``--zero-rounds`` times."""
    policy = ["--policy", "autoscale_down_window_s=2", "--policy", "autoscale_settle_s=1"]
    cold, warm = [], []
    with temp_cluster(0, ["--autoscale", f"0:{args.max}", *policy]) as home, cbctl.connect(home) as client:
        _deploy(home, client)
        for _ in range(args.zero_rounds):
            deadline = time.monotonic() + 60
            while True:
                state = client.supervisor_status()["autoscale"]
                if state["executors"] == 0 and state["departing"] == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not scale to zero within 60 s")
                time.sleep(0.1)
            started = time.monotonic()
            client.call("work", 1, timeout=60)
            cold.append(time.monotonic() - started)
            started = time.monotonic()
            client.call("work", 1, timeout=60)
            warm.append(time.monotonic() - started)
    return {"case": f"first call from zero (0:{args.max}), {args.zero_rounds} rounds",
            "p50_ms": round(statistics.median(cold) * 1000, 1), "max_ms": round(max(cold) * 1000, 1),
            "warm_p50_ms": round(statistics.median(warm) * 1000, 1)}


def _deploy(home: Path, client: cbctl.Client) -> None:
    source = home / "autoscale_bench_fn.py"
    source.write_text(FUNCTION)
    client.deploy_file(source)


def plot(cases: dict[str, dict[str, Any]], path: str, args: argparse.Namespace) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for name, case in cases.items():
        times = [t for t, _, _ in case["executors"]]
        top.step(times, [c for _, c, _ in case["executors"]], where="post", label=name)
        bottom.scatter([t for t, _ in case["latencies"]], [s * 1000 for _, s in case["latencies"]], s=3, label=name)
    top.axvspan(args.idle, args.idle + args.burst, color="grey", alpha=0.15, label=f"burst: {args.rate:g} calls/s")
    top.set_ylabel("CPU executors running")
    top.legend(fontsize=8, loc="upper right")
    top.set_title(f"step load of {WORK_S * 1000:.0f} ms calls (one executor: {1 / WORK_S:.0f}/s)", fontsize=10)
    bottom.set_yscale("log")
    bottom.set_ylabel("call latency, ms (log)")
    bottom.set_xlabel("seconds (by the time each call was sent)")
    bottom.axvspan(args.idle, args.idle + args.burst, color="grey", alpha=0.15)
    bottom.legend(fontsize=8, loc="upper right", markerscale=3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min", type=int, default=1, help="MIN of the autoscaled cluster and the small fixed one")
    parser.add_argument("--max", type=int, default=4, help="MAX of the autoscaled cluster and the large fixed one")
    parser.add_argument("--rate", type=float, default=40.0, help="calls/s during the burst")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle before the burst")
    parser.add_argument("--burst", type=float, default=15.0, help="seconds of burst")
    parser.add_argument("--after", type=float, default=60.0, help="seconds idle after the burst (the down window "
                                                                  "is 30 s by default)")
    parser.add_argument("--policy", action="append", default=[], metavar="autoscale_NAME=VALUE")
    parser.add_argument("--zero-rounds", type=int, default=5, help="first calls from zero to time (0: skip)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw executors and latency over time")
    args = parser.parse_args()
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]' (or pip install matplotlib)") from None
    low = max(args.min, 1)
    policy = [x for item in args.policy for x in ("--policy", item)]
    configurations = {
        f"autoscale {args.min}:{args.max}": (args.min, ["--autoscale", f"{args.min}:{args.max}", *policy]),
        f"fixed {low}": (low, []),
        f"fixed {args.max}": (args.max, []),
    }
    cases = {}
    for name, (executors, extra) in configurations.items():
        with temp_cluster(max(executors, 1) if not extra else executors, extra) as home:
            with cbctl.connect(home) as client:
                _deploy(home, client)
            cases[name] = run_case(home, args, name)
    rows = [case["row"] for case in cases.values()]
    zero = first_call_from_zero(args) if args.zero_rounds > 0 else None
    if args.plot:
        plot(cases, args.plot, args)
    print_report("autoscaling: step load, autoscaled vs fixed", rows,
                 {"first_call_from_zero": zero, "rate": args.rate, "burst_s": args.burst, "work_ms": WORK_S * 1000})
    if zero is not None:
        print(f"# first call from zero: p50 {zero['p50_ms']} ms, max {zero['max_ms']} ms "
              f"(a warm call: {zero['warm_p50_ms']} ms)")


if __name__ == "__main__":
    main()
