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
    """Calls ``name`` back to back from one client, idling ``idle_s`` between calls, until stopped."""

    def __init__(self, client, name: str, busy_s: float, idle_s: float) -> None:
        super().__init__(daemon=True)
        self.client, self.name, self.busy_s, self.idle_s = client, name, busy_s, idle_s
        self.calls = 0
        self.ran_on: set[str] = set()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.ran_on.add(self.client.call(self.name, self.busy_s, timeout=10))
                self.calls += 1
                self.stop.wait(self.idle_s)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


@pytest.fixture
def gpu_cluster(start_cluster):
    """Two CPU executors and one fake-GPU one (testing-only switch): a GPU function can only run on the
    GPU executor, so a sequential load of it keeps exactly one executor busy, whatever the policy does."""
    return start_cluster(executors=2, extra_args=("--gpu-executors", "1", "--fake-gpus", "1"))


def test_half_busy_executor_utilization_and_exact_call_counts(gpu_cluster):
    client = gpu_cluster.client()
    client.register(half_busy, name="half_busy", gpu=True)
    client.register(failing, name="failing")
    load = Load(client, "half_busy", busy_s=0.05, idle_s=0.05)
    load.start()
    try:
        # two full status intervals under load, so the latest report covers a loaded interval throughout
        time.sleep(2.5)
        snapshot = top_json(gpu_cluster)
    finally:
        load.stop.set()
        load.join(15)
    assert load.error is None, load.error
    executors = by_id(snapshot)
    assert load.ran_on == {"executor-2"}
    gpu = executors["executor-2"]
    assert gpu["type"] == "gpu" and gpu["state"] == "ready"
    assert 0.35 <= gpu["utilization"] <= 0.65, gpu
    assert gpu["busy"]["call"] == pytest.approx(gpu["utilization"]) and gpu["busy"]["dag"] == 0.0
    assert gpu["gpu"] == {"name": "", "utilization": None, "memory_used_bytes": None, "memory_total_bytes": None}
    assert 5 <= gpu["calls_per_s"] <= 12  # one call per ~100 ms
    assert 40_000 <= gpu["p50_us"] <= 70_000 and gpu["p99_us"] >= gpu["p50_us"]
    for cpu_id in ("executor-0", "executor-1"):
        assert executors[cpu_id]["type"] == "cpu"
        assert executors[cpu_id]["utilization"] < 0.1, executors[cpu_id]
    function = by_name(snapshot)["half_busy"]
    assert function["gpu"] is True and set(function["ran_on"]) == {"executor-2"}
    assert 40_000 <= function["p50_us"] <= 70_000
    assert snapshot["totals"]["calls_per_s"] > 3

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
