"""`cbctl top` and the health summary of `cbctl status`, against real clusters under loads of known shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pexpect
import pytest

from cbctl.errors import FunctionError
from cbctl.runtime.defaults import STATUS_INTERVAL_S
from cbctl.snapshot import take_snapshot
from tests.conftest import STORE_BACKENDS, run_cli


@pytest.fixture(scope="module", params=STORE_BACKENDS)
def store_backend(request) -> str:
    """Every test here runs on the embedded store and on Redis."""
    return request.param


def half_busy(cb, seconds):
    """Busy (asleep, as far as occupancy goes) for ``seconds``: the executor's thread of user code is held."""
    time.sleep(seconds)
    return cb.getid()


def failing(cb):
    raise ValueError("on purpose")


def top_json(handle) -> dict:
    return json.loads(handle.cli("top", "--once", "--json", check=True).stdout)


def by_id(snapshot: dict) -> dict:
    return {e["id"]: e for e in snapshot["executors"]}


def by_name(snapshot: dict) -> dict:
    return {f["name"]: f for f in snapshot["functions"]}


class Load(threading.Thread):
    """Calls ``name`` back to back from one client, idling ``idle_s`` between calls, until stopped; records
    when each call was sent and answered (time.monotonic), so that tests derive their bounds from what the
    load really did on this machine, not from what it would do on a quiet one."""

    def __init__(self, client, name: str, busy_s: float, idle_s: float) -> None:
        super().__init__(daemon=True)
        self.client, self.name, self.busy_s, self.idle_s = client, name, busy_s, idle_s
        self.calls = 0
        self.spans: list[tuple[float, float]] = []
        self.ran_on: set[str] = set()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                sent = time.monotonic()
                self.ran_on.add(self.client.call(self.name, self.busy_s, timeout=10))
                self.spans.append((sent, time.monotonic()))
                self.calls += 1
                self.stop.wait(self.idle_s)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def longest_round_trip(self) -> float:
        return max(end - sent for sent, end in self.spans)

    def longest_cycle(self) -> float:
        """The longest time from one answer to the next."""
        ends = [end for _, end in self.spans]
        return max(b - a for a, b in zip(ends, ends[1:]))


@pytest.fixture
def gpu_cluster(start_cluster):
    """Two CPU executors and one fake-GPU one (testing-only switch): a GPU function can only run on the
    GPU executor, so a sequential load of it keeps exactly one executor busy, whatever the policy does."""
    return start_cluster(executors=2, extra_args=("--gpu-executors", "1", "--fake-gpus", "1"))


def covers_load(home, load: Load, executor_id: str) -> dict | None:
    """A snapshot whose status of ``executor_id`` reports an interval that began after the load's first call
    (so the load ran throughout it), else None."""
    asked = time.monotonic()
    snapshot = take_snapshot(home)
    row = by_id(snapshot)[executor_id]
    if row["status_age_s"] is None or row["calls_per_s"] is None or not load.spans:
        return None
    reported = asked - row["status_age_s"]  # at the latest: the age was measured after `asked`
    return snapshot if reported - TOP_INTERVAL_BOUND_S > load.spans[0][0] else None


#: An upper bound on one status interval: STATUS_INTERVAL_S, stretched by a call in progress (50 ms here) and
#: a loaded machine. Intervals are never shorter (an executor reports when STATUS_INTERVAL_S has passed).
TOP_INTERVAL_BOUND_S = 2 * STATUS_INTERVAL_S


def test_half_busy_executor_utilization_and_exact_call_counts(gpu_cluster):
    client = gpu_cluster.client()
    client.register(half_busy, name="half_busy", gpu=True)
    client.register(failing, name="failing")
    load = Load(client, "half_busy", busy_s=0.05, idle_s=0.05)
    load.start()
    try:
        snapshot = gpu_cluster.wait_for(lambda: covers_load(gpu_cluster.home, load, "executor-2"), timeout=30,
                                        interval=0.2, what="a status of executor-2 covering an interval of load")
    finally:
        load.stop.set()
        load.join(15)
    assert load.error is None, load.error
    executors = by_id(snapshot)
    assert load.ran_on == {"executor-2"}
    gpu = executors["executor-2"]
    assert gpu["type"] == "gpu" and gpu["state"] == "ready"
    assert gpu["busy"]["call"] == pytest.approx(gpu["utilization"]) and gpu["busy"]["dag"] == 0.0
    assert gpu["gpu"] == {"name": "", "utilization": None, "memory_used_bytes": None, "memory_total_bytes": None}
    # Bounds from what the load did here: each call holds the executor at least busy_s and at most its round
    # trip. The executor counts a call's busy time when it ends, so utilization is calls/s times the mean
    # time of the interval's calls, at most the slowest of them (p99 of under 100 calls: the slowest's
    # histogram bucket, whose midpoint is within 1/32 of it).
    busy_s, longest = load.busy_s, load.longest_round_trip()
    slowest_s = gpu["p99_us"] / 1e6 * 1.04
    assert gpu["calls_per_s"] * busy_s * 0.99 <= gpu["utilization"] <= gpu["calls_per_s"] * slowest_s, gpu
    # one call at a time, each at least busy_s; and the load answered at least every longest_cycle()
    assert 1 / load.longest_cycle() - 1 / STATUS_INTERVAL_S <= gpu["calls_per_s"] <= 1 / busy_s, gpu
    # the histogram's buckets are within 1/16 of a value
    assert busy_s * 1e6 * 0.94 <= gpu["p50_us"] <= gpu["p99_us"] <= longest * 1e6 * 1.07, (gpu, longest)
    for cpu_id in ("executor-0", "executor-1"):
        assert executors[cpu_id]["type"] == "cpu"
        assert executors[cpu_id]["calls_per_s"] == 0 and executors[cpu_id]["utilization"] < 0.1, executors[cpu_id]
    function = by_name(snapshot)["half_busy"]
    assert function["gpu"] is True and set(function["ran_on"]) == {"executor-2"}
    assert busy_s * 1e6 * 0.94 <= function["p50_us"] <= longest * 1e6 * 1.07, (function, longest)
    assert snapshot["totals"]["calls_per_s"] > 0

    # errors are counted per function, and counts match the calls made once the next status is in
    for _ in range(3):
        with pytest.raises(FunctionError):
            client.call("failing", timeout=10)
    made = load.calls

    def settled():
        s = top_json(gpu_cluster)
        functions = by_name(s)
        ok = functions["half_busy"]["calls"] == made and functions.get("failing", {}).get("errors") == 3
        return s if ok else None

    snapshot = gpu_cluster.wait_for(settled, timeout=10, interval=0.3, what="call counts to settle")
    functions = by_name(snapshot)
    assert functions["failing"]["calls"] == 3
    assert by_id(snapshot)["executor-2"]["calls"] == made
    assert snapshot["totals"]["calls"] == made + 3
    assert snapshot["schedulers"][0]["calls"] == made + 3

    # the human-readable snapshot shows the GPU executor as such, with its function and n/a device columns
    text = cli_wide(gpu_cluster, "top", "--once")
    row = next(line for line in text.splitlines() if line.startswith("executor-2"))
    assert " GPU " in row and "n/a" in row
    assert any(line.startswith("half_busy") and "fn GPU" in line and "executor-2" in line
               for line in text.splitlines())

    status = gpu_cluster.cli("status", check=True).stdout
    assert "calls/s" in status and "executors  3 ready" in status and "store " in status
    health = json.loads(gpu_cluster.cli("status", "--json", check=True).stdout)["health"]
    assert health["executor_states"]["ready"] == 3 and health["processes"]["up"] == 5
    assert health["schedulers_not_answering"] == []


def cli_wide(handle, *args: str) -> str:
    """``cbctl ARGS`` on a 200-column console, where `top` shows every column."""
    env = {**os.environ, "CBCTL_HOME": str(handle.home), "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "cbctl.cli", *args], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_top_under_a_pseudo_terminal_refreshes_and_quits_on_q(deployed):
    client = deployed.client()
    for i in range(20):
        assert client.call("pipeline", i, timeout=10) == (i + 1) ** 2
    env = {**os.environ, "CBCTL_HOME": str(deployed.home), "TERM": "xterm-256color"}
    child = pexpect.spawn(sys.executable, ["-m", "cbctl.cli", "top", "--interval", "0.5"], env=env,
                          dimensions=(50, 200), timeout=20)
    try:
        child.expect("update 1")
        child.expect("update 2")  # a second refresh: the screen is redrawn, not printed once
        screen = child.before.decode(errors="replace")
        child.expect("update 3")
        screen += child.before.decode(errors="replace")
        assert "executors" in screen and "utilization" in screen and "functions and DAGs" in screen
        for executor in ("executor-0", "executor-1"):
            assert executor in screen
        assert "pipeline" in screen and "increment" in screen
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    tail = child.before
    assert b"\x1b[?1049l" in tail  # left the alternate screen: the terminal is back as it was
    assert b"Traceback" not in tail


def test_top_says_so_when_the_cluster_goes_away(start_cluster):
    handle = start_cluster(executors=1)
    env = {**os.environ, "CBCTL_HOME": str(handle.home), "TERM": "xterm-256color"}
    child = pexpect.spawn(sys.executable, ["-m", "cbctl.cli", "top", "--interval", "0.3"], env=env,
                          dimensions=(40, 160), timeout=30)
    try:
        child.expect("update 2")
        handle.cli("down", check=True)
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 1
    out = child.before.decode(errors="replace")
    assert f"the cluster in {handle.home} went away" in out
    assert "Traceback" not in out


def test_top_without_a_cluster_and_bad_options(tmp_path):
    result = run_cli(tmp_path, "top", "--once")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: no cluster is running in {tmp_path}: start one with `cbctl up`"
    result = run_cli(tmp_path, "top", "--sort", "memory")
    assert result.returncode == 2 and "'memory' is not one of" in result.stderr
    result = run_cli(tmp_path, "top", "--interval", "0")
    assert result.returncode == 2 and "--interval" in result.stderr
