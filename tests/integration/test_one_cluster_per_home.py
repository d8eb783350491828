"""One cluster per home, enforced by kernel locks rather than by the cluster file: two `cbctl up` at once, a
damaged or removed cluster file while the cluster runs, and a data directory some other store still holds."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from cbctl.runtime import home_lock
from cbctl.runtime.cluster import ClusterFile, data_dir
from tests.conftest import run_cli
from tests.integration.test_lifecycle import all_gone, assert_one_line_error


def supervisors_of(home) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(arg.startswith("cbctl.runtime.supervisor") for arg in cmdline) and str(home) in cmdline:
            found.append(proc.pid)
    return found


def test_two_ups_at_once_one_cluster_and_the_loser_fails_at_once(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "CBCTL_HOME": str(home)}
    command = [sys.executable, "-m", "cbctl.cli", "up", "--executors", "1"]
    started = time.monotonic()
    ups = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
    try:
        outcomes = [(p.wait(timeout=90), *p.communicate()) for p in ups]
        elapsed = time.monotonic() - started
        found = ClusterFile.read(home)
        assert found is not None, f"no cluster came up: {outcomes}"
        codes = sorted(code for code, _, _ in outcomes)
        assert codes == [0, 1], outcomes
        (loser,) = [err for code, _, err in outcomes if code == 1]
        assert loser.startswith("error: a cluster is already running") and "Traceback" not in loser, loser
        assert elapsed < 30, f"the loser must fail at once, not after a start-up timeout ({elapsed:.0f} s)"
        assert supervisors_of(home) == [found.supervisor_pid], "exactly one supervisor runs in the home"
        # the winner's cluster is reachable: its file was not removed by the loser
        run_cli(home, "put", "k", "v", check=True)
        assert run_cli(home, "get", "k", check=True).stdout.strip() == "v"
        # a third `up`, once the winner runs, names its supervisor
        assert_one_line_error(run_cli(home, "up", "--executors", "1"), "already running",
                              f"supervisor pid {found.supervisor_pid}")
    finally:
        found = ClusterFile.read(home)
        run_cli(home, "down", timeout=60)
        for pid in supervisors_of(home) + (found.pids() if found else []):
            psutil.Process(pid).kill() if psutil.pid_exists(pid) else None


def test_damaged_cluster_file_while_running_is_rebuilt_never_deleted(start_cluster):
    handle = start_cluster(executors=1)
    handle.cli("put", "keep", '"me"', check=True)
    original = handle.cluster_file()
    path = handle.home / "cluster.json"
    for damage in (path.read_bytes()[:50], b"", b"{}", b"[]", b"null", b'{"supervisor_pid": "abc"}', None):
        if damage is None:
            path.unlink()  # removed altogether
        else:
            path.write_bytes(damage)
        # a command that meets the damage waits for the supervisor's rewrite and works; nothing deletes the file
        status = handle.cli("status")
        assert status.returncode == 0, (damage, status.stderr)
        assert handle.cli("get", "keep", check=True).stdout.strip() == "me"
        rebuilt = ClusterFile.read(handle.home)
        assert rebuilt is not None and rebuilt.supervisor_pid == original.supervisor_pid
        path.write_bytes(b"[]")
        # `up` refuses at once, naming the running supervisor, and starts nothing
        assert_one_line_error(handle.cli("up", "--executors", "1"), "already running",
                              f"supervisor pid {original.supervisor_pid}")
        assert supervisors_of(handle.home) == [original.supervisor_pid]
        handle.wait_for(lambda: ClusterFile.read(handle.home) is not None, timeout=5, what="the rewrite")
    pids = handle.pids()
    handle.cli("down", check=True)
    assert all_gone(pids)
    assert not path.exists()


def test_a_store_will_not_open_a_data_directory_another_process_holds(tmp_path):
    home = tmp_path / "home"
    directory = data_dir(home)
    home.mkdir(mode=0o700)
    directory.mkdir(mode=0o700)
    fd = home_lock.acquire(directory / home_lock.STORE_LOCK)  # as a store still running there would
    try:
        result = run_cli(home, "up", "--executors", "1", timeout=90)
        assert_one_line_error(result, "in use by another store", f"pid {os.getpid()}")
        assert ClusterFile.read(home) is None and supervisors_of(home) == []
    finally:
        home_lock.release(fd)
    run_cli(home, "up", "--executors", "1", check=True, timeout=90)  # free again: the same home starts
    found = ClusterFile.read(home)
    pids = found.pids()
    run_cli(home, "down", check=True)
    assert all_gone(pids)
