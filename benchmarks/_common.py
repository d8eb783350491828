"""Shared helpers for the benchmark scripts: a throwaway cluster, percentiles, and the report format.

Every benchmark prints one rich table for people and then exactly one JSON line for scripts
(``{"benchmark": TITLE, "rows": [...], ...extra}``), so results can be collected with ``tail -n 1``.
"""

from __future__ import annotations

import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cbctl.lifecycle import kill_processes
from cbctl.runtime.cluster import ClusterFile


def _cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CBCTL_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "cbctl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _cluster_pids(home: Path) -> list[int]:
    found = ClusterFile.read(home)
    return [] if found is None else found.pids()


@contextmanager
def temp_cluster(executors: int, extra_args: Sequence[str] = ()) -> Iterator[Path]:
    """Start a cluster in a fresh temporary home, yield the home, and always stop it (even on error or
    Ctrl-C): ``cbctl down`` first, then a kill of any pid of the cluster file that outlived it."""
    with tempfile.TemporaryDirectory(prefix="cbbench-") as tmp:
        home = Path(tmp) / "home"
        pids: list[int] = []
        try:
            started = _cli(home, "up", "--executors", str(executors), *extra_args)
            pids = _cluster_pids(home)
            if started.returncode != 0:
                raise RuntimeError(f"cbctl up failed: {started.stderr.strip() or started.stdout.strip()}")
            yield home
        finally:
            pids = pids or _cluster_pids(home)
            if pids:
                _cli(home, "down", timeout=60)
            kill_processes(pids)


def compile_bytecode() -> str:
    """Compile cbctl's modules and the benchmarks' to bytecode, as ``pip install`` does for a package, so that a
    measured start reads them instead of compiling every module from source: an editable checkout run with
    ``PYTHONDONTWRITEBYTECODE`` set has no bytecode, and then each of `cbctl up`'s three interpreters compiles
    what it imports (about 0.15 s of a 2-core machine's start), while the peers compared with it, installed by
    pip, have theirs. Returns what was done, for the report."""
    import cbctl

    folders = [Path(cbctl.__file__).parent, Path(__file__).parent]
    if not all(os.access(folder, os.W_OK) for folder in folders):
        return "as installed (a folder is read-only)"
    compiled = all(compileall.compile_dir(folder, quiet=2) for folder in folders)
    return "compiled before the rounds" if compiled else "compiled, with errors"


def percentile(sorted_samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted samples (``fraction`` in [0, 1])."""
    if not sorted_samples:
        raise ValueError("percentile of no samples")
    rank = min(len(sorted_samples) - 1, max(0, round(fraction * len(sorted_samples)) - 1))
    return sorted_samples[rank]


def summarize(samples_s: list[float]) -> dict[str, float]:
    """Median, p99 and mean of latency samples given in seconds, reported in microseconds."""
    ordered = sorted(samples_s)
    return {
        "median_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(percentile(ordered, 0.99) * 1e6, 1),
        "mean_us": round(statistics.fmean(ordered) * 1e6, 1),
    }


def print_report(title: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """A rich table of ``rows`` (columns from the union of their keys, in first-seen order), then one JSON
    line with everything, last on stdout."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("name", "case", "op", "clients") else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    Console().print(table)
    print(json.dumps({"benchmark": title, "rows": rows, **(extra or {})}), flush=True)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
