"""A cluster shared by the tests of one module (starting one costs a few seconds): a context manager the
modules wrap in a module-scoped fixture. Tests on it use names of their own, so order does not matter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cbctl.lifecycle import kill_processes
from tests.conftest import RunningCluster, run_cli, store_server

DEPLOYABLES = Path(__file__).resolve().parent / "deployables"
TOOLKIT = DEPLOYABLES / "toolkit.py"


@contextmanager
def module_cluster(home: Path, executors: int = 2, deploy: tuple[Path, ...] = (),
                   extra_args: tuple[str, ...] = (), store: str = "embedded") -> Iterator[RunningCluster]:
    """A cluster in ``home`` on ``store`` (a ``store_backend``: "redis" starts a redis-server of its own)."""
    with store_server(store, home.parent / f"{home.name}-redis") as (store_args, server):
        handle = RunningCluster(home, server)
        try:
            run_cli(home, "up", "--executors", str(executors), *store_args, *extra_args, check=True, timeout=90)
            for path in deploy:
                handle.cli("deploy", str(path), check=True)
            yield handle
        finally:
            handle.close_clients()
            pids = handle.pids()
            if pids:
                run_cli(home, "down", timeout=60)
            kill_processes(pids)


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
