"""A cluster shared by the tests of one module (starting one costs a few seconds): the plugin's
``cbctl_cluster`` (cbctl/pytest_plugin.py), as a user's tests get it. Tests on it use names of their own, so
order does not matter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cbctl import LocalCluster
from tests.conftest import RunningCluster

DEPLOYABLES = Path(__file__).resolve().parent / "deployables"
TOOLKIT = DEPLOYABLES / "toolkit.py"


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
