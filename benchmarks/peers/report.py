"""The peers benchmark's pure part: samples -> statistics -> rows with ratios to cbctl -> table, JSON, chart.

No processes, no sockets: the unit tests drive every function here with made-up samples.

A row is ``{"workload", "system", "median_ms", "p99_ms", "calls_per_s", "x_cbctl"}``. ``x_cbctl`` is how
many times longer the system takes than cbctl: its median over cbctl's median, and for ``in_flight``
(a throughput) cbctl's calls/s over its calls/s. Above 1, cbctl is ahead; ``None`` when cbctl was not run.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._common import percentile
from benchmarks.peers.workloads import WORKLOADS

TITLE = "cbctl vs Ray vs Dask: latency (ms) and calls/s"
COLUMNS = ("workload", "system", "median_ms", "p99_ms", "calls_per_s", "x_cbctl")
#: Workloads whose ratio compares throughput (calls/s) rather than the median latency.
THROUGHPUT_WORKLOADS = frozenset({"in_flight"})


class PlotUnavailable(RuntimeError):
    """``--plot`` was asked for but matplotlib is not installed."""


@dataclass
class Samples:
    """Everything measured for one (system, workload): latencies in seconds and the wall time of the blocks
    that produced them (``None`` for cold start, which has no calls/s)."""

    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float | None = 0.0

    def add_block(self, latencies_s: Sequence[float], elapsed_s: float | None) -> None:
        self.latencies_s.extend(latencies_s)
        if elapsed_s is None or self.elapsed_s is None:
            self.elapsed_s = None
        else:
            self.elapsed_s += elapsed_s


def statistics_of(samples: Samples) -> dict[str, float | None]:
    """Median and p99 (nearest rank) in milliseconds, and calls per second over the blocks' wall time."""
    if not samples.latencies_s:
        raise ValueError("no samples")
    ordered = sorted(samples.latencies_s)
    rate = None
    if samples.elapsed_s:
        rate = len(ordered) / samples.elapsed_s
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3,
        "calls_per_s": rate,
    }


def ratio_to_cbctl(workload: str, row: dict[str, Any], cbctl_row: dict[str, Any] | None) -> float | None:
    """How many times longer ``row``'s system takes than cbctl on ``workload`` (see the module docstring)."""
    if cbctl_row is None:
        return None
    if workload in THROUGHPUT_WORKLOADS:
        mine, theirs = row["calls_per_s"], cbctl_row["calls_per_s"]
        return theirs / mine if mine and theirs else None
    mine, theirs = row["median_ms"], cbctl_row["median_ms"]
    return mine / theirs if theirs else None


def build_rows(measured: dict[str, dict[str, Samples]], systems: Sequence[str]) -> list[dict[str, Any]]:
    """One row per workload and system (workloads in report order, systems in ``systems`` order), skipping
    pairs with no samples; every row carries its ratio to cbctl's row of the same workload."""
    rows = []
    for workload in WORKLOADS:
        stats = {system: statistics_of(measured[system][workload]) for system in systems
                 if workload in measured.get(system, {}) and measured[system][workload].latencies_s}
        for system, values in stats.items():
            row: dict[str, Any] = {"workload": workload, "system": system, **values}
            row["x_cbctl"] = ratio_to_cbctl(workload, row, stats.get("cbctl"))
            rows.append(_rounded(row))
    return rows


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _significant(value) if isinstance(value, float) else value for key, value in row.items()}


def _significant(value: float, digits: int = 4) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def format_cell(value: Any) -> str:
    """Three significant figures with thousands separators; empty for a missing value."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def render_table(rows: Iterable[dict[str, Any]], title: str = TITLE) -> Table:
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("workload", "system") else "right")
    previous = None
    for row in rows:
        if previous is not None and row["workload"] != previous:
            table.add_section()
        previous = row["workload"]
        table.add_row(*(format_cell(row.get(column)) for column in COLUMNS))
    return table


def json_line(rows: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    """The one JSON line every benchmark ends with (the format of ``benchmarks._common.print_report``)."""
    return json.dumps({"benchmark": TITLE, "rows": rows, **extra})


def print_report(rows: list[dict[str, Any]], notes: Sequence[str], extra: dict[str, Any],
                 console: Console | None = None) -> None:
    """Notes (skipped or failed systems), the table, then the JSON line, last on stdout."""
    console = console or Console()
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print(render_table(rows))
    print(json_line(rows, {**extra, "notes": list(notes)}), flush=True)


def require_matplotlib() -> None:
    """Raise ``PlotUnavailable`` with what to do when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as missing:
        raise PlotUnavailable("--plot needs matplotlib, which is not installed: "
                              "pip install -e '.[bench]' (or pip install matplotlib)") from missing


def plot(rows: Sequence[dict[str, Any]], path: str, subtitle: str = "") -> None:
    """A bar chart: per workload, one bar per system at its median, a whisker up to its p99; log scale."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    workloads = [w for w in WORKLOADS if any(row["workload"] == w for row in rows)]
    systems = list(dict.fromkeys(row["system"] for row in rows))
    width = 0.8 / max(1, len(systems))
    figure, axes = plt.subplots(figsize=(10, 5.2))
    for i, system in enumerate(systems):
        by_workload = {row["workload"]: row for row in rows if row["system"] == system}
        xs = [j + (i - (len(systems) - 1) / 2) * width for j, w in enumerate(workloads) if w in by_workload]
        mine = [by_workload[w] for w in workloads if w in by_workload]
        medians = [row["median_ms"] for row in mine]
        whiskers = [[0.0] * len(mine), [max(0.0, row["p99_ms"] - row["median_ms"]) for row in mine]]
        bars = axes.bar(xs, medians, width, yerr=whiskers, capsize=3, label=system)
        for bar, row in zip(bars, mine):
            if system != "cbctl" and row.get("x_cbctl") is not None:
                # above the whisker, so the label never hides it
                axes.annotate(f"{row['x_cbctl']:.3g}x", (bar.get_x() + bar.get_width() / 2, row["p99_ms"]),
                              xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=7)
    axes.set_yscale("log")
    axes.set_xticks(range(len(workloads)))
    axes.set_xticklabels([_LABELS.get(w, w) for w in workloads])
    axes.set_ylabel("milliseconds (bar: median, whisker: p99; log scale)")
    axes.set_title(TITLE + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    axes.legend(fontsize=8)
    figure.text(0.01, 0.01, "Nx: time / cbctl's (in flight: cbctl's calls/s / the system's); above 1, cbctl is ahead",
                fontsize=7, alpha=0.8)
    axes.grid(axis="y", which="both", alpha=0.3)
    figure.tight_layout(rect=(0, 0.03, 1, 1))  # room for the note at the bottom
    figure.savefig(path, dpi=120)
    plt.close(figure)


_LABELS = {
    "noop": "no-op",
    "chain": "chain\nsquare(increment(x))",
    "fan": "fan-out/in\n4 functions",
    "state": "read 1 MB\nfrom state",
    "in_flight": "chain, 64 in\nflight (latency)",
    "cold_start": "cold start\nto 1st result",
}
