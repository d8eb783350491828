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


def test_cold_start_only_measures_the_first_result_alone():
    mark = uuid.uuid4().hex
    tmp = own_temp_dir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PEERS_TEST_MARK": mark, "TMPDIR": str(tmp)}
    try:
        result = subprocess.run([sys.executable, "-m", "benchmarks.peers", "--only", "cbctl", "--cold-start-only",
                                 "--rounds", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=100)
        assert result.returncode == 0, result.stderr
        parsed = json.loads(result.stdout.strip().splitlines()[-1])
        assert parsed["notes"] == [] and parsed["calls"] == 0 and parsed["rounds"] == 2
        assert parsed["bytecode"] == "compiled before the rounds"  # as pip leaves a package (a writable checkout)
        assert [(row["workload"], row["system"]) for row in parsed["rows"]] == [("cold_start", "cbctl")]
        assert 0 < parsed["rows"][0]["median_ms"] <= parsed["rows"][0]["p99_ms"]
        assert processes_marked(mark) == []
    finally:
        for process in processes_marked(mark):
            process.kill()
        shutil.rmtree(tmp, ignore_errors=True)


# 0.3 s: the runner is stopped while its cluster is starting (a cold start takes about that on 2 cores, more
# when loaded); 1.5 s: while it measures (a round of 10**6 in-flight calls cannot be over by then)
@pytest.mark.parametrize("deadline_s", [0.3, 1.5])
def test_a_round_past_its_deadline_fails_and_leaves_no_process(monkeypatch, deadline_s):
    from benchmarks.peers import driver

    mark = uuid.uuid4().hex
    tmp = own_temp_dir()
    monkeypatch.setenv("PEERS_TEST_MARK", mark)
    monkeypatch.setenv("TMPDIR", str(tmp))  # the runner's; this process's temp directory is unchanged
    try:
        with pytest.raises(driver.RoundFailed, match=f"cbctl: no result within {deadline_s:.0f} s"):
            driver.run_round("cbctl", calls=10, throughput_calls=10**6, warmup=1, timeout_s=deadline_s)
        assert processes_marked(mark) == []
    finally:
        for process in processes_marked(mark):
            process.kill()
        shutil.rmtree(tmp, ignore_errors=True)
