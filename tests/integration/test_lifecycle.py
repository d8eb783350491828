"""The cluster lifecycle end to end, with real processes: up / status / put / get / down, isolation of homes,
restarts after kill -9 (no acknowledged write lost), every misuse as one clean error line, garbage frames on
every server socket, logs, and which network interfaces the cluster listens on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

from cbctl.runtime.cluster import ClusterFile, socket_dir
from cbctl.runtime.defaults import PROTOCOL_VERSION
from cbctl.runtime.wire.messages import Ack, CallRequest, GetRequest, PutRequest, SupervisorRequest
from tests.conftest import EXAMPLES, STORE_BACKENDS, RunningCluster, run_cli, stop_everything

# Frames no server may die of: not msgpack at all, msgpack of the wrong shape, and the wrong protocol version.
GARBAGE_FRAMES = [
    b"\xc1" + os.urandom(15),  # 0xc1 is never valid msgpack: random bytes that cannot accidentally parse
    msgpack.packb({"not": "a message"}),
    msgpack.packb([PROTOCOL_VERSION + 40, GetRequest.KIND, 1, ["k"]]),
]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit code 1, exactly one line on stderr starting with ``error:``, no traceback."""
    assert result.returncode == 1, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got {lines}"
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def supervisor_status(handle: RunningCluster) -> dict:
    result = handle.cli("status", "--json", check=True)
    return json.loads(result.stdout)


def process_status(handle: RunningCluster, name: str) -> dict:
    (entry,) = [p for p in supervisor_status(handle)["processes"] if p["name"] == name]
    return entry


def all_gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in pids)


def listening_tcp(pids: list[int]) -> list[tuple[int, str, int]]:
    found = []
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.append((pid, conn.laddr.ip, conn.laddr.port))
    return found


def restarted_and_ready(handle: RunningCluster, name: str, old_pid: int):
    try:
        entry = process_status(handle, name)
    except AssertionError:
        return None  # the supervisor is busy restarting; ask again
    return entry if entry["pid"] != old_pid and entry["state"] == "ready" and entry["restarts"] == 1 else None


# --- up / status / put / get / down ----------------------------------------------------------------------


@pytest.mark.parametrize("store_backend", STORE_BACKENDS, indirect=True)
def test_up_status_put_get_logs_down_leaves_no_process(cluster):
    found = cluster.cluster_file()
    roles = sorted(f"{p.role}-{p.index}" for p in found.processes)
    store = "store" if cluster.redis is None else "triggers"  # on Redis: no store process, the trigger relay
    assert roles == sorted(["executor-0", "executor-1", "scheduler-0", f"{store}-0"])
    pids = cluster.pids()
    assert len(pids) == 5 and all(psutil.pid_exists(pid) for pid in pids)

    table = cluster.cli("status", check=True).stdout
    for name in roles:
        assert name in table
    report = supervisor_status(cluster)
    assert report["supervisor_pid"] == found.supervisor_pid
    assert {p["name"]: (p["state"], p["restarts"]) for p in report["processes"]} == {
        name: ("ready", 0) for name in roles}
    assert {p["pid"] for p in report["processes"]} == {p.pid for p in found.processes}

    # by default every socket is ipc: nothing of the cluster listens on TCP at all
    assert listening_tcp(pids) == []

    assert cluster.cli("put", "greeting", "hello", check=True).stdout.strip() == "stored greeting"
    assert cluster.cli("put", "config", '{"n": 3, "xs": [1, 2]}', check=True).returncode == 0
    assert cluster.cli("get", "greeting", check=True).stdout.strip() == "hello"
    assert json.loads(cluster.cli("get", "config", check=True).stdout) == {"n": 3, "xs": [1, 2]}
    assert cluster.cli("get", "greeting", "--json", check=True).stdout.strip() == '"hello"'
    assert cluster.client().get("config") == {"n": 3, "xs": [1, 2]}, "the CLI and the library see one store"
    cluster.close_clients()

    logs = cluster.cli("logs", store, check=True).stdout
    assert f"==> {store}-0.log <==" in logs and ("recovered 0 keys" in logs or cluster.redis is not None)
    assert "scheduler-0.log" not in logs, "a role narrows the logs to that role"
    everything = cluster.cli("logs", check=True).stdout
    for name in (f"{store}-0", "scheduler-0", "executor-0", "executor-1", "supervisor-0"):
        assert f"==> {name}.log <==" in everything
    assert_one_line_error(cluster.cli("logs", "nosuchrole"), "no logs for 'nosuchrole'")

    down = cluster.cli("down", check=True)
    assert "stopped (5 processes)" in down.stdout
    assert all_gone(pids), "`cbctl down` returned while processes of the cluster were still alive"
    assert ClusterFile.read(cluster.home) is None
    assert_one_line_error(cluster.cli("status"), "no cluster is running")


def test_two_clusters_in_two_homes_are_independent(start_cluster):
    first = start_cluster(executors=1)
    second = start_cluster(executors=1)
    assert first.home != second.home
    assert not set(first.pids()) & set(second.pids())
    first.cli("put", "shared-name", "from-first", check=True)
    second.cli("put", "shared-name", "from-second", check=True)
    first.cli("put", "only-first", "1", check=True)
    assert first.cli("get", "shared-name", check=True).stdout.strip() == "from-first"
    assert second.cli("get", "shared-name", check=True).stdout.strip() == "from-second"
    assert_one_line_error(second.cli("get", "only-first"), "no value is stored under 'only-first'")

    first_pids = first.pids()
    first.cli("down", check=True)
    assert all_gone(first_pids)
    assert second.cli("get", "shared-name", check=True).stdout.strip() == "from-second", \
        "stopping one cluster must not touch the other"
    assert all(psutil.pid_exists(pid) for pid in second.pids())


# --- restarts after kill -9 ------------------------------------------------------------------------------


def test_store_kill_9_loses_no_acknowledged_write(cluster):
    client = cluster.client()
    expected = {f"key-{i:04d}": {"i": i, "payload": "x" * (i % 17)} for i in range(1000)}
    for key, value in expected.items():
        client.put(key, value)
    old_pid = cluster.pid_of("store-0")
    os.kill(old_pid, signal.SIGKILL)
    entry = cluster.wait_for(lambda: restarted_and_ready(cluster, "store-0", old_pid), timeout=20,
                             what="the supervisor to restart the store")
    assert entry["restarts"] == 1 and entry["state"] == "ready"

    # the same client carries on (its store client retries on a fresh socket), and so does a new one
    assert {key: client.get(key) for key in expected} == expected
    fresh = cluster.client()
    assert len(fresh.list_keys("key-")) == 1000
    assert fresh.get("key-0999") == expected["key-0999"]
    assert fresh.store_stats()["keys"] >= 1000
    assert cluster.pid_of("store-0") == entry["pid"], "the cluster file follows the restarted process"


def test_executor_kill_9_is_restarted_and_calls_still_work(deployed):
    client = deployed.client()
    assert client.call("pipeline", 3, timeout=10) == 16
    old_pid = deployed.pid_of("executor-0")
    os.kill(old_pid, signal.SIGKILL)
    entry = deployed.wait_for(lambda: restarted_and_ready(deployed, "executor-0", old_pid), timeout=20,
                              what="the supervisor to restart executor-0")
    assert entry["restarts"] == 1
    assert process_status(deployed, "executor-1")["restarts"] == 0
    assert psutil.pid_exists(entry["pid"])
    assert [client.call("pipeline", i, timeout=10) for i in range(20)] == [(i + 1) ** 2 for i in range(20)]


# --- misuse: one clean line, exit 1 ----------------------------------------------------------------------


def test_up_when_already_running_and_get_of_a_missing_key(cluster):
    pids = cluster.pids()
    line = assert_one_line_error(cluster.cli("up", "--executors", "1"), "already running", str(cluster.home))
    assert "cbctl down" in line
    assert cluster.pids() == pids and all(psutil.pid_exists(pid) for pid in pids), "the running cluster is kept"
    assert_one_line_error(cluster.cli("get", "never-written"), "no value is stored under 'never-written'")
    cluster.cli("put", "gone-soon", "1", check=True)
    cluster.client().delete_key("gone-soon")
    assert_one_line_error(cluster.cli("get", "gone-soon"), "no value is stored under 'gone-soon'")


@pytest.mark.parametrize("args", [("down",), ("status",), ("status", "--json"), ("get", "k"), ("put", "k", "v")])
def test_commands_without_a_cluster(tmp_path, args):
    result = run_cli(tmp_path / "empty-home", *args)
    assert_one_line_error(result, "no cluster is running", "cbctl up")


def test_stale_cluster_file_is_cleaned_and_up_works_again(start_cluster):
    handle = start_cluster(executors=1)
    pids = handle.pids()
    for pid in pids:  # the whole cluster crashes at once
        os.kill(pid, signal.SIGKILL)
    handle.wait_for(lambda: all_gone(pids), timeout=10, what="the killed processes to disappear")
    assert ClusterFile.read(handle.home) is not None, "the crashed cluster leaves its file behind"

    line = assert_one_line_error(handle.cli("status"), "crashed", "cleaned up", "cbctl up")
    assert str(pids[0]) in line
    assert ClusterFile.read(handle.home) is None
    assert_one_line_error(handle.cli("status"), "no cluster is running")

    handle.cli("up", "--executors", "1", check=True)
    assert handle.cli("put", "k", "v", check=True).returncode == 0
    assert handle.cli("get", "k", check=True).stdout.strip() == "v"


def test_up_over_a_crashed_supervisor_kills_its_orphans(start_cluster):
    handle = start_cluster(executors=1)
    found = handle.cluster_file()
    children = [p.pid for p in found.processes]
    os.kill(found.supervisor_pid, signal.SIGKILL)
    handle.wait_for(lambda: all_gone([found.supervisor_pid]), timeout=10, what="the supervisor to die")
    result = handle.cli("up", "--executors", "1", check=True)
    assert "cleaned it up" in result.stderr
    assert all_gone(children), "the crashed cluster's children must not outlive the clean-up"
    assert handle.cli("put", "k", "v", check=True).returncode == 0


def test_a_long_homes_socket_directory_goes_with_its_cluster(start_cluster, tmp_path_factory):
    """A home too long for ipc paths puts its sockets in cbctl-HASH under the temp directory, which nothing
    else removes: `cbctl down`, the clean-up of a crashed cluster and a failed `cbctl up` must."""
    home = tmp_path_factory.mktemp("longhome") / ("h" * 90)
    sockets = socket_dir(home)
    assert not sockets.is_relative_to(home), "the home is not long enough to test the fallback"
    handle = start_cluster(executors=1, home=home)
    assert any(sockets.iterdir())
    handle.cli("down", check=True)
    assert not sockets.exists(), "`cbctl down` left the socket directory"

    handle.cli("up", "--executors", "1", check=True)
    pids = handle.pids()
    for pid in pids:  # the whole cluster crashes at once
        os.kill(pid, signal.SIGKILL)
    handle.wait_for(lambda: all_gone(pids), timeout=10, what="the killed processes to disappear")
    assert sockets.exists()
    assert_one_line_error(handle.cli("status"), "crashed", "cleaned up")
    assert not sockets.exists(), "cleaning up a crashed cluster left its socket directory"

    (home / "data" / "wal.log").write_bytes(b"not a log")  # the store cannot recover: `up` fails
    result = handle.cli("up", "--executors", "1")
    assert result.returncode == 1 and "did not start" in result.stderr, result.stderr
    assert not sockets.exists(), "a failed `cbctl up` left its socket directory"


def test_unreadable_cluster_file_is_cleaned(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "cluster.json").write_text("{not json")
    assert_one_line_error(run_cli(home, "status"), "unreadable", "removed")
    assert not (home / "cluster.json").exists()


# --- garbage on every server socket ----------------------------------------------------------------------


def send_garbage(address: str, socket_type: int, frames: list[bytes]) -> None:
    context = zmq.Context.instance()
    sock = context.socket(socket_type)
    sock.setsockopt(zmq.LINGER, 2000)  # let the frames leave before close
    try:
        sock.connect(address)
        for frame in frames:
            sock.send(frame)
    finally:
        sock.close()


def test_garbage_frames_are_counted_and_survived_by_every_process(deployed):
    client = deployed.client()
    found = deployed.cluster_file()
    executor = next(p for p in found.processes if p.role == "executor")
    executor_id = f"executor-{executor.index}"
    pids = deployed.pids()

    def executor_errors() -> int | None:
        status = client.cluster_info()["executors"].get(executor_id)
        return None if status is None else status["metrics"]["protocol_errors"]

    before = {
        "store": client.store_stats()["protocol_errors"],
        "scheduler": client.cluster_info()["counters"]["protocol_errors"],
        "executor": executor_errors(),
        "supervisor": supervisor_status(deployed)["protocol_errors"],
    }
    assert before == {"store": 0, "scheduler": 0, "executor": 0, "supervisor": 0}

    # a well-formed message the receiver does not serve is as foreign as garbage (the store answers it
    # with an error reply instead, which the DEALER here never reads)
    not_served = Ack(1).pack()
    # a known kind with the right field count but fields of the wrong types: refused at unpack, like garbage
    wrong_types = {
        "store": msgpack.packb([PROTOCOL_VERSION, PutRequest.KIND, 1, 5, 5]),
        "scheduler": msgpack.packb([PROTOCOL_VERSION, CallRequest.KIND, *[5] * len(CallRequest._FIELDS)]),
        "supervisor": msgpack.packb([PROTOCOL_VERSION, SupervisorRequest.KIND, "x", 5, 5]),
    }
    send_garbage(found.store_address, zmq.DEALER, [*GARBAGE_FRAMES, wrong_types["store"]])
    send_garbage(found.scheduler_addresses[0], zmq.DEALER, [*GARBAGE_FRAMES, not_served, wrong_types["scheduler"]])
    send_garbage(executor.address, zmq.PUSH, [*GARBAGE_FRAMES, not_served])
    send_garbage(found.control_address, zmq.DEALER, [*GARBAGE_FRAMES, not_served, wrong_types["supervisor"]])

    deployed.wait_for(lambda: client.store_stats()["protocol_errors"] == 4, timeout=10, what="store counter")
    assert client.store_stats()["request_errors"] == 0
    deployed.wait_for(lambda: client.cluster_info()["counters"]["protocol_errors"] == 5, timeout=10,
                      what="scheduler counter")
    deployed.wait_for(lambda: executor_errors() == 4, timeout=10,
                      what="executor counter in its next status report")
    deployed.wait_for(lambda: supervisor_status(deployed)["protocol_errors"] == 5, timeout=10,
                      what="supervisor counter")

    # every process is the one that started, and serving
    assert deployed.pids() == pids and all(psutil.pid_exists(pid) for pid in pids)
    assert all(p["restarts"] == 0 and p["state"] == "ready" for p in supervisor_status(deployed)["processes"])
    client.put("after-garbage", [1, 2, 3])
    assert client.get("after-garbage") == [1, 2, 3]
    assert [client.call("pipeline", i, timeout=10) for i in range(10)] == [(i + 1) ** 2 for i in range(10)]
    assert deployed.cli("call", "diamond", "5", check=True).stdout.strip() == "25"


# --- TCP when asked, and only on loopback ----------------------------------------------------------------


def test_listen_on_loopback_tcp_end_to_end(start_cluster):
    handle = start_cluster(executors=1, extra_args=("--listen", "tcp://127.0.0.1"))
    found = handle.cluster_file()
    addresses = [found.control_address, found.store_address, *found.scheduler_addresses,
                 *(p.address for p in found.processes)]
    assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses

    handle.cli("put", "k", '{"v": 1}', check=True)
    assert json.loads(handle.cli("get", "k", check=True).stdout) == {"v": 1}
    handle.cli("deploy", str(EXAMPLES / "pipeline.py"), check=True)
    assert handle.cli("call", "pipeline", "3", check=True).stdout.strip() == "16"
    client = handle.client()
    assert client.call("diamond", 5, timeout=10) == 25
    assert client.get("k") == {"v": 1}

    listening = listening_tcp(handle.pids())
    # supervisor control + store + scheduler + executor each listen on one port
    assert len(listening) >= 4, listening
    assert {ip for _, ip, _ in listening} == {"127.0.0.1"}, f"a socket listens beyond loopback: {listening}"
    ports = {port for _, _, port in listening}
    assert {int(a.rsplit(":", 1)[1]) for a in addresses} <= ports


def test_listen_rejects_a_malformed_address(tmp_path):
    result = run_cli(tmp_path / "home", "up", "--executors", "1", "--listen", "127.0.0.1:5000")
    assert_one_line_error(result, "--listen", "tcp://HOST")


def test_ctrl_c_during_up_stops_the_half_started_cluster(tmp_path):
    """The supervisor is detached: if Ctrl-C left it running, a cluster with no cluster file would hold the
    home's sockets and log with nothing able to stop it."""
    home = tmp_path / "home"
    for _ in range(3):  # `up` can win the race to the interrupt; then there was nothing to test: again
        if ctrl_c_during_up(home):
            return
    pytest.fail("the cluster came up before the interrupt, 3 times: nothing was tested")


def ctrl_c_during_up(home: Path) -> bool:
    """Interrupt `cbctl up` once the supervisor has started a child; False if the cluster was up already."""
    env = {**os.environ, "CBCTL_HOME": str(home)}
    # executors take their time to import, so there is a moment with the supervisor and some children up
    # SIGINT restored to its default in the child: run from a shell's background job (`pytest ... &`) it would
    # inherit SIGINT ignored, and Python then installs no Ctrl-C handler
    cli = subprocess.Popen([sys.executable, "-m", "cbctl.cli", "up", "--executors", "2"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 30
        while not started and time.monotonic() < deadline:
            supervisors = [p for p in psutil.process_iter(["cmdline"]) if "cbctl.runtime.supervisor"
                           in (p.info["cmdline"] or []) and str(home) in p.info["cmdline"]]
            if supervisors and supervisors[0].children():
                started = [supervisors[0], *supervisors[0].children(recursive=True)]
            time.sleep(0.02)
        assert started, "the supervisor never started a child"
        if ClusterFile.read(home) is not None:
            cli.communicate(timeout=30)
            return False
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=30)
        if cli.returncode == 0 and ClusterFile.read(home) is not None:
            return False  # `up` finished between the look at the cluster file and the signal
        assert cli.returncode != 0
        assert "interrupted while the cluster was starting" in err
        gone, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, f"left running after Ctrl-C: {alive}"
        assert ClusterFile.read(home) is None
        return True
    finally:
        cli.kill()
        cli.wait()
        stop_everything(home, started)  # the cluster that won the race too
