"""`cbctl up` returns with the whole cluster ready (nothing of the start moved out of sight by making it
faster), and `--verbose` says where its time went."""

from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest

import cbctl
from cbctl.errors import CbctlError
from cbctl.lifecycle import STARTUP_PHASES, SupervisorProcess, kill_processes, wait_for_cluster
from cbctl.runtime.cluster import ClusterFile
from tests.conftest import run_cli

PHASE_LINE = re.compile(r"^  (?P<name>\S.*?)\s{2,}(?P<took>[0-9]+) ms\s+(?P<at>[0-9]+) ms$")


def test_up_returns_with_every_process_ready_and_verbose_shows_each_phase(tmp_path):
    home = tmp_path / "home"
    try:
        result = run_cli(home, "up", "--executors", "2", "--verbose", check=True, timeout=90)
        with cbctl.connect(home) as client:  # at once: the scheduler knows every executor already
            assert len(client.cluster_info()["executors"]) == 2
            client.register(lambda cb, x: -x, name="neg")
            assert client.call("neg", 1, timeout=10) == -1
        status = json.loads(run_cli(home, "status", "--json", check=True).stdout)
        assert [p["state"] for p in status["processes"]] == ["ready"] * 4

        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"cluster up in {home} (2 CPU + 0 GPU executors")
        phases = [PHASE_LINE.match(line) for line in lines[2:]]
        assert all(phases), lines
        assert [m["name"] for m in phases] == [name for name, _, _ in STARTUP_PHASES]
        at = [int(m["at"]) for m in phases]
        assert at == sorted(at) and at[0] > 0
        assert abs(at[-1] - sum(int(m["took"]) for m in phases)) <= len(phases)  # each rounded to the ms
    finally:
        found = ClusterFile.read(home)
        if found is not None:
            run_cli(home, "down", timeout=60)
            kill_processes(found.pids())



def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_the_wait_for_ready_leaves_no_descriptor_behind():
    """The supervisor says on a pipe when the cluster is up; the owner's end is closed with the wait, and nothing
    of the cluster stays open in the owner once the block is left (a test suite starts many)."""
    before = open_fds()
    cluster = cbctl.local(executors=1)
    with cluster as client:
        client.register(lambda cb, x: x, name="same")
        assert client.call("same", 1, timeout=10) == 1
        assert cluster._supervisor is not None and cluster._supervisor.ready_pipe == -1
    assert open_fds() - before == set()


def test_a_supervisor_that_exits_first_ends_the_wait_with_its_reason(tmp_path):
    """Its exit ends the pipe: the wait returns with the reason it left, not at its deadline."""
    read_end, write_end = os.pipe()
    (tmp_path / "startup-error.txt").write_text("the store could not open its data")
    proc = SupervisorProcess([sys.executable, "-c", "import time; time.sleep(0.3)"], pass_fds=(write_end,))
    os.close(write_end)
    proc.ready_pipe = read_end
    started = time.monotonic()
    with pytest.raises(CbctlError, match="did not start: the store could not open its data"):
        wait_for_cluster(tmp_path, proc, timeout_s=30)
    assert time.monotonic() - started < 10
    assert proc.ready_pipe == -1  # closed by the wait
    proc.wait()
