"""`cbctl up` returns with the whole cluster ready (nothing of the start moved out of sight by making it
faster), and `--verbose` says where its time went."""

from __future__ import annotations

import json
import re

import cbctl
from cbctl.lifecycle import STARTUP_PHASES, kill_processes
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
