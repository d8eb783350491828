"""``python -m benchmarks.peers --only cbctl`` end to end: it brings up its own cluster in a fresh process,
measures every workload, prints the table and the JSON line, and leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO


def processes_marked(mark: str) -> list[psutil.Process]:
    """Processes whose environment carries ``PEERS_TEST_MARK=mark`` (children inherit it)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("PEERS_TEST_MARK") == mark:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def own_temp_dir() -> Path:
    """A temp directory for the benchmark's processes (their TMPDIR), which the test removes: a runner stopped
    at its deadline is killed, and then nothing else removes its cluster's temporary home."""
    return Path(tempfile.mkdtemp(prefix="peers-"))


def test_peers_benchmark_runs_cbctl_end_to_end():
    mark = uuid.uuid4().hex
    tmp = own_temp_dir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PEERS_TEST_MARK": mark, "TMPDIR": str(tmp)}
    try:
        result = subprocess.run([sys.executable, "-m", "benchmarks.peers", "--only", "cbctl", "--calls", "20"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=100)
        assert result.returncode == 0, result.stderr
        parsed = json.loads(result.stdout.strip().splitlines()[-1])
        assert parsed["notes"] == []
        assert parsed["systems"] == ["cbctl"]
        rows = {row["workload"]: row for row in parsed["rows"]}
        assert list(rows) == ["noop", "chain", "fan", "state", "in_flight", "cold_start"]
        for workload, row in rows.items():
            assert row["system"] == "cbctl"
            assert 0 < row["median_ms"] <= row["p99_ms"], row
            assert row["x_cbctl"] == 1.0
            assert (row["calls_per_s"] is None) == (workload == "cold_start"), row
        assert rows["cold_start"]["median_ms"] > rows["noop"]["median_ms"]
        assert "cold_start" in result.stdout  # the table
        assert processes_marked(mark) == []
    finally:
        for process in processes_marked(mark):  # never leave a cluster behind, even when an assert failed
            process.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_round_past_its_deadline_fails_and_leaves_no_process(monkeypatch):
    from benchmarks.peers import driver

    mark = uuid.uuid4().hex
    tmp = own_temp_dir()
    monkeypatch.setenv("PEERS_TEST_MARK", mark)
    monkeypatch.setenv("TMPDIR", str(tmp))  # the runner's; this process's temp directory is unchanged
    try:
        # 1.5 s: the runner is stopped while `cbctl up` is still starting the cluster
        with pytest.raises(driver.RoundFailed, match="cbctl: no result within 2 s"):
            driver.run_round("cbctl", calls=10, throughput_calls=128, warmup=1, timeout_s=1.5)
        assert processes_marked(mark) == []
    finally:
        for process in processes_marked(mark):
            process.kill()
        shutil.rmtree(tmp, ignore_errors=True)
