"""A cluster shared by the tests of one module (starting one costs a few seconds): a context manager the
modules wrap in a module-scoped fixture. Tests on it use names of their own, so order does not matter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cbctl.lifecycle import kill_processes
from tests.conftest import RunningCluster, run_cli

DEPLOYABLES = Path(__file__).resolve().parent / "deployables"
TOOLKIT = DEPLOYABLES / "toolkit.py"


@contextmanager
def module_cluster(home: Path, executors: int = 2, deploy: tuple[Path, ...] = ()) -> Iterator[RunningCluster]:
    handle = RunningCluster(home)
    try:
        run_cli(home, "up", "--executors", str(executors), check=True, timeout=90)
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
