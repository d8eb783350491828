"""Executor self-measurement, rate windows and `cbctl top` snapshots, as pure logic (no processes)."""

from __future__ import annotations

import io
import random

import pytest
from rich.console import Console

from cbctl import snapshot as snap
from cbctl import top
from cbctl.runtime.metrics import (
    ExecutorMetrics,
    RateWindow,
    bucket_bounds_ns,
    bucket_of,
    in_flight_estimate,
    merge_histograms,
    percentile_us,
)


def test_buckets_are_monotonic_and_contain_their_values():
    previous = -1
    for ns in [*range(0, 5000), *(random.Random(1).randrange(1, 1 << 45) for _ in range(5000))]:
        index = bucket_of(ns)
        low, high = bucket_bounds_ns(index)
        assert low <= ns < high
        assert (high - low) <= max(1, low / 16)  # the advertised resolution
        if ns < 5000:
            assert index >= previous
            previous = index


def test_percentiles_are_within_the_bucket_resolution():
    rng = random.Random(7)
    samples = [int(rng.lognormvariate(12, 1.5)) for _ in range(20_000)]
    histogram: dict[int, int] = {}
    for ns in samples:
        histogram[bucket_of(ns)] = histogram.get(bucket_of(ns), 0) + 1
    ordered = sorted(samples)
    for q in (0.5, 0.9, 0.99):
        exact_us = ordered[int(q * len(ordered)) - 1] / 1000
        assert percentile_us(histogram, q) == pytest.approx(exact_us, rel=0.04)
    assert percentile_us({}, 0.5) is None


def test_merged_histograms_give_cluster_wide_percentiles():
    fast = [[bucket_of(1_000), 99]]
    slow = [[bucket_of(1_000_000), 1]]
    merged = merge_histograms([fast, slow])
    assert percentile_us(merged, 0.5) == pytest.approx(1.0, rel=0.04)
    assert percentile_us(merged, 0.999) == pytest.approx(1000.0, rel=0.04)


class FakeClock:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def test_executor_metrics_report_occupancy_by_activity_per_interval():
    clock = FakeClock()
    metrics = ExecutorMetrics("cpu", clock_ns=clock)
    for _ in range(4):
        metrics.record_call("f", False, 100_000_000, True)  # 4 x 100 ms single calls
    metrics.record_call("g", True, 200_000_000, False)  # a failed DAG step of 200 ms
    metrics.record_pin(50_000_000)
    clock.ns = 1_000_000_000
    report = metrics.report({"f": 2})
    assert report["interval_s"] == pytest.approx(1.0)
    assert report["utilization"] == pytest.approx(0.65)
    assert report["busy"] == pytest.approx({"pin": 0.05, "call": 0.4, "dag": 0.2})
    assert (report["calls"], report["errors"], report["interval_calls"], report["interval_errors"]) == (5, 1, 5, 1)
    f, g = report["functions"]["f"], report["functions"]["g"]
    assert (f["calls"], f["errors"], f["queue"], g["errors"]) == (4, 0, 2, 1)
    assert f["p50_us"] == pytest.approx(100_000, rel=0.04) and g["p99_us"] == pytest.approx(200_000, rel=0.04)
    assert report["gpu"] is None and report["rss_bytes"] > 0

    # the next interval starts empty; cumulative counts carry on
    metrics.record_call("f", False, 10_000_000, True)
    clock.ns = 3_000_000_000
    report = metrics.report()
    assert report["utilization"] == pytest.approx(0.005)
    assert report["functions"]["f"]["calls"] == 5 and report["functions"]["f"]["interval_calls"] == 1
    assert report["functions"]["g"]["interval_calls"] == 0 and report["functions"]["g"]["p50_us"] is None


def test_gpu_executor_without_nvml_device_reports_none_not_zero():
    report = ExecutorMetrics("gpu", device=97).report()  # no such device, with or without pynvml
    assert report["gpu"] == {"name": "", "utilization": None, "memory_used_bytes": None,
                             "memory_total_bytes": None}


def test_utilization_is_capped_for_a_run_longer_than_the_interval():
    clock = FakeClock()
    metrics = ExecutorMetrics("cpu", clock_ns=clock)
    clock.ns = 1_000_000_000
    metrics.record_call("long", False, 5_000_000_000, True)
    assert metrics.report()["utilization"] == 1.0


def test_rate_window():
    window = RateWindow(window_s=5.0, every_s=1.0)
    assert window.rates(0.0, {"calls": 3}) == {"calls": 0.0}
    counts = {"calls": 0}
    for second in range(10):
        counts["calls"] = 10 * second
        window.maybe_sample(float(second), counts)
        window.maybe_sample(second + 0.5, counts)  # not due: ignored
    assert window.rates(9.5, {"calls": 95}) == {"calls": pytest.approx(10.0)}


def test_in_flight_estimate_counts_queues_and_occupancy_of_running_executors():
    statuses = [{"running": True, "queue_length": 2, "utilization": 0.5},
                {"running": True, "queue_length": 0, "utilization": 0.25},
                {"running": False, "queue_length": 9, "utilization": 1.0}]
    assert in_flight_estimate(statuses) == pytest.approx(2.75)


# --- snapshots --------------------------------------------------------------------------------------------


def process(name: str, pid: int, state: str = "ready", restarts: int = 0, executor_type: str = "cpu") -> dict:
    role = name.rsplit("-", 1)[0]
    return {"name": name, "role": role, "index": int(name.rsplit("-", 1)[1]), "pid": pid, "address": "",
            "state": state, "uptime_s": 10.0, "restarts": restarts,
            "executor_type": executor_type if role == "executor" else "", "cpu_percent": 1.0, "rss_bytes": 1000}


def status(executor_id: str, pid: int, utilization: float, functions: dict, age: float = 0.5,
           running: bool = True, pinned: tuple[str, ...] = ()) -> dict:
    return {"executor_id": executor_id, "address": "", "executor_type": "cpu", "running": running,
            "pinned": list(pinned), "utilization": utilization, "queue_length": 0, "cached_keys": [], "pid": pid,
            "status_age_s": age,
            "metrics": {"interval_s": 1.0, "utilization": utilization,
                        "busy": {"pin": 0.0, "call": utilization, "dag": 0.0}, "calls": 0, "errors": 0,
                        "interval_calls": sum(f["interval_calls"] for f in functions.values()),
                        "interval_errors": 0, "p50_us": None, "p99_us": None, "cpu_percent": 50.0,
                        "rss_bytes": 2000, "gpu": None, "functions": functions}}


def fn(calls: int, interval_calls: int, latency_ns: int) -> dict:
    return {"calls": calls, "errors": 0, "interval_calls": interval_calls, "interval_errors": 0, "queue": 0,
            "p50_us": None, "p99_us": None, "hist": [[bucket_of(latency_ns), interval_calls]]}


def raw_answers(policy: dict | None = None) -> dict:
    processes = [process("store-0", 10), process("scheduler-0", 11), process("executor-0", 20),
                 process("executor-1", 21), process("executor-2", 22, state="restarting", restarts=2),
                 process("executor-3", 23), process("executor-4", 24), process("executor-10", 30),
                 process("executor-5", 25)]
    executors = {
        "executor-0": status("executor-0", 20, 0.5, {"f": fn(10, 4, 1_000_000)}, pinned=("f",)),
        "executor-1": status("executor-1", 21, 0.1, {"f": fn(5, 4, 3_000_000)}),
        "executor-2": status("executor-2", 22, 0.9, {}),
        "executor-3": status("executor-3", 999, 0.9, {}),  # an earlier incarnation's status
        "executor-4": status("executor-4", 24, 0.0, {}, age=30.0),
        "executor-10": status("executor-10", 30, 0.0, {}, running=False),
        "executor-5": status("executor-5", 25, 0.2, {}),
    }
    info = {"scheduler": "scheduler-0", "uptime_s": 10.0,
            "counters": {"calls": 7, "dag_calls": 2, "dispatch_errors": 1, "protocol_errors": 0},
            "rates": {"calls": 3.0, "dag_calls": 1.0, "dispatch_errors": 0.5, "protocol_errors": 0.0},
            "name_calls": {"f": 7, "chain": 2}, "name_rates": {"f": 3.0, "chain": 1.0}, "in_flight": 0.6,
            "executors": executors,
            "registry": {"functions": {"f": {"gpu": False}, "unused": {"gpu": True}}, "dags": {"chain": ["f", "f2"]}},
            "policy": policy or {"backoff": ["executor-5"]}}
    return {"home": "/h", "supervisor": {"home": "/h", "uptime_s": 12.0, "processes": processes},
            "schedulers": {"scheduler-0": info}, "store": {"keys": 3, "bytes": 10, "log_bytes": 20, "ops_per_s": 1.5}}


def test_snapshot_states_rates_and_merged_percentiles():
    snapshot = snap.build_snapshot(raw_answers(), now=100.0)
    assert snapshot["version"] == snap.SNAPSHOT_VERSION and snapshot["time"] == 100.0
    executors = {e["id"]: e for e in snapshot["executors"]}
    assert [e["id"] for e in snapshot["executors"]][-1] == "executor-10"  # natural order
    assert {i: e["state"] for i, e in executors.items()} == {
        "executor-0": "ready", "executor-1": "ready", "executor-2": "dead", "executor-3": "starting",
        "executor-4": "silent", "executor-5": "backoff", "executor-10": "draining"}
    assert executors["executor-2"]["utilization"] is None and executors["executor-2"]["restarts"] == 2
    assert executors["executor-3"]["utilization"] is None  # the stale incarnation's numbers are not shown
    assert executors["executor-0"]["calls_per_s"] == 4.0 and executors["executor-0"]["cpu_percent"] == 50.0
    functions = {f["name"]: f for f in snapshot["functions"]}
    f = functions["f"]
    assert (f["calls"], f["calls_per_s"], f["pinned_on"]) == (15, 8.0, ["executor-0"])
    assert f["ran_on"] == {"executor-0": 10, "executor-1": 5}
    assert f["p50_us"] == pytest.approx(1000, rel=0.04) and f["p99_us"] == pytest.approx(3000, rel=0.04)
    assert functions["unused"]["gpu"] is True and functions["unused"]["p50_us"] is None
    assert snapshot["dags"] == [{"name": "chain", "functions": ["f", "f2"], "calls": 2, "calls_per_s": 1.0}]
    assert snapshot["totals"]["calls"] == 9 and snapshot["totals"]["calls_per_s"] == 4.0
    assert snapshot["totals"]["errors_per_s"] == 0.5 and snapshot["totals"]["in_flight"] == 0.6
    assert snapshot["processes"] == {"total": 9, "up": 8, "restarts": 2}
    assert snapshot["store"]["ops_per_s"] == 1.5


@pytest.mark.parametrize("policy", [
    {"backoff": {"executor-5": 3.0}},
    {"executors": {"executor-5": {"backoff": True}}},
    {"executors": {"executor-5": {"state": "backoff"}}},
])
def test_backoff_is_read_from_the_shapes_policy_describe_may_take(policy):
    executors = {e["id"]: e for e in snap.build_snapshot(raw_answers(policy))["executors"]}
    assert executors["executor-5"]["state"] == "backoff"


def test_snapshot_with_silent_scheduler_and_store_renders_at_any_width():
    raw = raw_answers()
    raw["schedulers"]["scheduler-0"] = None
    raw["store"] = None
    snapshot = snap.build_snapshot(raw)
    assert snapshot["schedulers"][0]["answered"] is False and snapshot["store"] is None
    assert all(e["utilization"] is None for e in snapshot["executors"])
    for width in (80, 200):
        out = io.StringIO()
        console = Console(file=out, width=width)
        console.print(top.render(snapshot, "calls", "footer", width))
        for line in top.health_lines(snapshot):
            console.print(line)
        text = out.getvalue()
        assert "not answering: scheduler-0" in text and "store  not answering" in text
        assert "executor-10" in text


def test_render_sorts_executors():
    snapshot = snap.build_snapshot(raw_answers())
    order = [e["id"] for e in snapshot["executors"]]
    rendered = top.executors_table(snapshot, "util")
    assert rendered.columns[0]._cells[:2] == ["executor-0", "executor-5"]
    assert top.executors_table(snapshot, "name").columns[0]._cells == order
