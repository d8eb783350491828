"""The soak benchmark runs end to end for a few seconds (so it cannot rot): its own cluster, every call
answered, one JSON line with every process's memory figures, exit status 0; and it is torn down after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import psutil

from tests.conftest import REPO
from tests.leftovers import kill_all, processes_naming

SOAK_TEST_MARK = "CBCTL_SOAK_TEST_MARK"


def test_soak_runs_briefly_and_reports_every_process():
    # The benchmark's cluster is detached: it is found by this mark (inherited by every process the benchmark
    # starts) and killed, whatever happened. The timeout is under pytest's (120 s), so this test, and not
    # pytest-timeout, ends a hung benchmark and reaches the `finally`.
    mark = uuid.uuid4().hex
    try:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.soak", "--seconds", "5", "--warmup", "2", "--rate", "200",
             "--in-flight", "16", "--max-growth", "50"],
            cwd=REPO, capture_output=True, text=True, timeout=90,
            env={**os.environ, "PYTHONPATH": str(REPO), SOAK_TEST_MARK: mark})
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        report = json.loads(result.stdout.strip().splitlines()[-1])
        calls = report["calls"]
        assert calls["lost"] == 0 and calls["errors"] == 0, calls
        assert calls["answered"] == calls["sent"] >= 900, calls
        names = {row["name"] for row in report["processes"]}
        assert {"supervisor", "store-0", "scheduler-0", "executor-0", "executor-1"} <= names, names
        assert all(row["rss_end_mb"] > 0 for row in report["processes"]), report["processes"]
        assert report["passed"] is True and report["failures"] == []
        still_running = [row for row in report["processes"] if _running(row["pid"])]
        assert not still_running, f"the soak left its cluster running: {still_running}"
        assert processes_naming([], {SOAK_TEST_MARK: mark}) == []
    finally:
        kill_all(processes_naming([], {SOAK_TEST_MARK: mark}))


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
