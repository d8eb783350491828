"""What processes measure about themselves for ``cbctl top``: kept cheaply on the hot path, reported on a timer.

An executor measures occupancy as Cloudburst's do: busy time over wall time per reporting interval, split by
activity (pinning, single calls, DAG steps), and per function the calls, errors, queue length and a latency
histogram for p50/p99 over the interval. Recording one call is a handful of integer operations on objects that
already exist (no allocation once a function has been seen, no clock read beyond the caller's own, no
logging); everything that costs more (percentiles, psutil, NVML, building the report dict) happens once per
report. Schedulers and the store turn their cumulative counters into per-second rates with a ``RateWindow``
sampled from their loops' timer work.

Latency histogram: log-linear buckets over nanoseconds with ``2**HIST_SUB_BITS`` buckets per power of two,
so a bucket spans at most 1/16 of its value and a percentile read from bucket midpoints is within about 3%.
Bucket indexes travel in reports (sparse ``[[index, count], ...]``), so readers merge histograms from several
executors exactly and compute cluster-wide percentiles with ``percentile_us``.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psutil

log = logging.getLogger(__name__)

#: Sub-buckets per power of two of the latency histogram (4 bits: 16 per doubling, each <= 6.25% wide).
HIST_SUB_BITS = 4
_LINEAR_BITS = HIST_SUB_BITS + 1  # values below 2**_LINEAR_BITS ns get a bucket each

ACTIVITIES = ("pin", "call", "dag")


def bucket_of(ns: int) -> int:
    """The histogram bucket of a latency in nanoseconds (monotonic in ``ns``)."""
    bits = ns.bit_length()
    if bits <= _LINEAR_BITS:
        return ns if ns > 0 else 0
    shift = bits - _LINEAR_BITS
    return (shift << HIST_SUB_BITS) + (ns >> shift)


def bucket_bounds_ns(index: int) -> tuple[int, int]:
    """``[low, high)`` nanoseconds of bucket ``index`` (the inverse of ``bucket_of``)."""
    if index < (1 << _LINEAR_BITS):
        return index, index + 1
    shift = (index >> HIST_SUB_BITS) - 1
    mantissa = index - (shift << HIST_SUB_BITS)
    return mantissa << shift, (mantissa + 1) << shift


def percentile_us(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram ``{bucket: count}``, in microseconds (bucket midpoint);
    None for an empty histogram."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, min(total, int(q * total + 0.999999)))  # the ceil(q * n)-th smallest sample
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            low, high = bucket_bounds_ns(index)
            return (low + high) / 2 / 1000
    return None  # unreachable: seen reaches total


def merge_histograms(histograms: Iterable[Iterable[Iterable[int]]]) -> dict[int, int]:
    """Sum sparse ``[[bucket, count], ...]`` histograms (as reports carry them) into one ``{bucket: count}``."""
    merged: dict[int, int] = collections.defaultdict(int)
    for histogram in histograms:
        for index, count in histogram:
            merged[int(index)] += int(count)
    return dict(merged)


class FunctionMeter:
    """One function's counters on one executor: cumulative calls/errors, and the interval's histogram."""

    __slots__ = ("calls", "errors", "histogram", "reported_calls", "reported_errors")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.histogram: dict[int, int] = {}
        self.reported_calls = 0
        self.reported_errors = 0


class GpuSampler:
    """Utilization and memory of one GPU through NVML, when ``pynvml`` (package nvidia-ml-py) is importable
    and the device exists; otherwise every reading is None, which ``cbctl top`` shows as n/a (not zero:
    a fake or missing device has no utilization, it does not have zero)."""

    def __init__(self, device: int) -> None:
        self.name = ""
        self._nvml: Any = None
        self._handle: Any = None
        try:
            import pynvml  # optional extra `gpu`

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.name = name.decode() if isinstance(name, bytes) else str(name)
            self._nvml = pynvml
        except Exception as exc:  # ImportError, NVMLError (no driver, no such device), anything else
            log.info("no NVML readings for device %d: %s", device, exc)

    def sample(self) -> dict[str, Any]:
        utilization = used = total = None
        if self._nvml is not None:
            try:
                utilization = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu / 100.0
                memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                used, total = int(memory.used), int(memory.total)
            except Exception as exc:  # a device that fell off the bus reads as n/a, not as a crash
                log.warning("NVML reading failed: %s", exc)
        return {"name": self.name, "utilization": utilization, "memory_used_bytes": used,
                "memory_total_bytes": total}


class ExecutorMetrics:
    """An executor's self-measurement. The executor calls ``record_call`` after every function run and
    ``record_pin`` after every pin (both on its one thread), and ``report`` once per status interval.

    Invariant: only the executor's thread touches this object, so nothing here needs a lock.
    """

    def __init__(self, executor_type: str = "cpu", device: int | None = None,
                 clock_ns: Callable[[], int] = time.perf_counter_ns) -> None:
        self._clock_ns = clock_ns
        self.functions: dict[str, FunctionMeter] = {}
        self.busy_call_ns = 0
        self.busy_dag_ns = 0
        self.busy_pin_ns = 0
        self._reported_busy = (0, 0, 0)
        self._last_report_ns = self._clock_ns()
        self._process = psutil.Process(os.getpid())
        try:
            self._process.cpu_percent(None)  # starts the CPU% measurement; the first reading is meaningless
        except psutil.Error:
            pass
        self._gpu = GpuSampler(device if device is not None and device >= 0 else 0) \
            if executor_type == "gpu" else None

    # --- the hot path: called once per function run -------------------------------------------------

    def record_call(self, function: str, in_dag: bool, elapsed_ns: int, ok: bool) -> None:
        """Count one run of ``function`` that took ``elapsed_ns`` (a DAG step when ``in_dag``)."""
        meter = self.functions.get(function)
        if meter is None:
            meter = self.functions[function] = FunctionMeter()
        meter.calls += 1
        if not ok:
            meter.errors += 1
        if in_dag:
            self.busy_dag_ns += elapsed_ns
        else:
            self.busy_call_ns += elapsed_ns
        # bucket_of, inlined: this line runs per call
        bits = elapsed_ns.bit_length()
        if bits <= _LINEAR_BITS:
            index = elapsed_ns if elapsed_ns > 0 else 0
        else:
            shift = bits - _LINEAR_BITS
            index = (shift << HIST_SUB_BITS) + (elapsed_ns >> shift)
        histogram = meter.histogram
        histogram[index] = histogram.get(index, 0) + 1

    def record_pin(self, elapsed_ns: int) -> None:
        """Count time spent loading and constructing a function for a pin request."""
        self.busy_pin_ns += elapsed_ns

    # --- once per interval -----------------------------------------------------------------------------

    def report(self, queue_by_function: Mapping[str, int] | None = None) -> dict[str, Any]:
        """The interval since the last report, as a plain dict for ``ExecutorStatus.metrics``; starts the
        next interval. See the README section "cbctl top --json" for what each field means."""
        now = self._clock_ns()
        wall_ns = max(now - self._last_report_ns, 1)
        self._last_report_ns = now
        busy = (self.busy_pin_ns, self.busy_call_ns, self.busy_dag_ns)
        interval_busy = [b - r for b, r in zip(busy, self._reported_busy)]
        self._reported_busy = busy
        queues = queue_by_function or {}
        functions: dict[str, Any] = {}
        everything: dict[int, int] = collections.defaultdict(int)
        calls = errors = interval_calls = interval_errors = 0
        for name, meter in self.functions.items():
            histogram, meter.histogram = meter.histogram, {}
            for index, count in histogram.items():
                everything[index] += count
            new_calls, new_errors = meter.calls - meter.reported_calls, meter.errors - meter.reported_errors
            meter.reported_calls, meter.reported_errors = meter.calls, meter.errors
            calls, errors = calls + meter.calls, errors + meter.errors
            interval_calls, interval_errors = interval_calls + new_calls, interval_errors + new_errors
            functions[name] = {
                "calls": meter.calls, "errors": meter.errors,
                "interval_calls": new_calls, "interval_errors": new_errors,
                "p50_us": percentile_us(histogram, 0.5), "p99_us": percentile_us(histogram, 0.99),
                "queue": queues.get(name, 0),
                "hist": sorted([i, c] for i, c in histogram.items()),
            }
        for name, queued in queues.items():
            if name not in functions:
                functions[name] = {"calls": 0, "errors": 0, "interval_calls": 0, "interval_errors": 0,
                                   "p50_us": None, "p99_us": None, "queue": queued, "hist": []}
        cpu_percent: float | None
        rss_bytes: int | None
        try:
            with self._process.oneshot():
                cpu_percent = self._process.cpu_percent(None)
                rss_bytes = self._process.memory_info().rss
        except psutil.Error:
            cpu_percent = rss_bytes = None
        return {
            "interval_s": wall_ns / 1e9,
            "utilization": min(1.0, sum(interval_busy) / wall_ns),
            "busy": {a: min(1.0, b / wall_ns) for a, b in zip(ACTIVITIES, interval_busy)},
            "calls": calls, "errors": errors, "interval_calls": interval_calls, "interval_errors": interval_errors,
            "p50_us": percentile_us(everything, 0.5), "p99_us": percentile_us(everything, 0.99),
            "cpu_percent": cpu_percent, "rss_bytes": rss_bytes,
            "gpu": self._gpu.sample() if self._gpu is not None else None,
            "functions": functions,
        }


class RateWindow:
    """Per-second rates of cumulative counters, over the last ``window_s`` seconds.

    The owner calls ``maybe_sample(now, counters)`` from its loop's timer work (it returns at once unless
    ``every_s`` passed, so calling it every loop iteration is fine) and ``rates(now, counters)`` when asked.
    """

    def __init__(self, window_s: float, every_s: float) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self._samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque()
        self._next = 0.0

    def maybe_sample(self, now: float, counters: Mapping[str, int]) -> None:
        if now < self._next:
            return
        self._next = now + self.every_s
        self._samples.append((now, dict(counters)))
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def rates(self, now: float, counters: Mapping[str, int]) -> dict[str, float]:
        """``{name: per second}`` from the oldest kept sample to ``counters`` now (0.0 before any sample)."""
        if not self._samples:
            return {name: 0.0 for name in counters}
        then, old = self._samples[0]
        elapsed = now - then
        if elapsed <= 0:
            return {name: 0.0 for name in counters}
        return {name: max(0.0, (value - old.get(name, 0)) / elapsed) for name, value in counters.items()}


def in_flight_estimate(statuses: Iterable[Mapping[str, Any]]) -> float:
    """Calls in flight across executors, by Little's law: what is queued on each executor plus its
    occupancy (the average number of functions running there over the last interval). An estimate: the
    scheduler does not see calls finish, executors do."""
    total = 0.0
    for status in statuses:
        if status.get("running", True):
            total += float(status.get("queue_length") or 0) + float(status.get("utilization") or 0.0)
    return total
