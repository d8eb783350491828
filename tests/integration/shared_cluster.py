"""A cluster shared by the tests of one module (starting one costs a few seconds). Most modules take it from
the plugin's ``cbctl_cluster`` fixture (``view``), as a user's tests would; ``module_cluster`` starts one with
`cbctl up` (for a module that needs the command line's own options). Tests on it use names of their own, so
order does not matter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cbctl import LocalCluster
from cbctl.lifecycle import kill_processes
from tests.conftest import RunningCluster, run_cli

DEPLOYABLES = Path(__file__).resolve().parent / "deployables"
TOOLKIT = DEPLOYABLES / "toolkit.py"


@contextmanager
def module_cluster(home: Path, executors: int = 2, deploy: tuple[Path, ...] = (),
                   extra_args: tuple[str, ...] = ()) -> Iterator[RunningCluster]:
    handle = RunningCluster(home)
    try:
        run_cli(home, "up", "--executors", str(executors), *extra_args, check=True, timeout=90)
        for path in deploy:
            handle.cli("deploy", str(path), check=True)
        yield handle
    finally:
        handle.close_clients()
        pids = handle.pids()
        if pids:
            run_cli(home, "down", timeout=60)
        kill_processes(pids)


@contextmanager
def view(cbctl_cluster: LocalCluster) -> Iterator[RunningCluster]:
    """The cluster the plugin's ``cbctl_cluster`` fixture gives (one per module, started with the module's
    ``@pytest.mark.cbctl`` options and deploy files, stopped after its last test), seen through the tests'
    ``RunningCluster`` helpers; the clients a test makes through it are closed after the test."""
    handle = RunningCluster(cbctl_cluster.home)
    try:
        yield handle
    finally:
        handle.close_clients()


def registered_names(handle: RunningCluster) -> tuple[set[str], set[str]]:
    """The registered function names and DAG names, as `cbctl ls --json` reports them."""
    listed = json.loads(handle.cli("ls", "--json", check=True).stdout)
    return {f["name"] for f in listed["functions"]}, {d["name"] for d in listed["dags"]}


def read_on_every_executor(client, key: str, count: int, consistency: str = "lww",
                           tries: int = 80) -> dict[str, Any]:
    """Call the deployed ``read_key(key) -> (executor_id, value)`` until ``count`` executors ran it; the last
    value each one returned."""
    seen: dict[str, Any] = {}
    for _ in range(tries):
        executor_id, value = client.call("read_key", key, consistency=consistency, timeout=10)
        seen[executor_id] = value
        if len(seen) == count:
            return seen
    raise AssertionError(f"reads of {key!r} ran only on {sorted(seen)} in {tries} calls")
