"""A cluster shared by the tests of one module (starting one costs a few seconds). Most modules take it from
the plugin's ``cbctl_cluster`` fixture (``view``), as a user's tests would; ``module_cluster`` starts one with
`cbctl up` (for a module that needs the command line's own options). Tests on it use names of their own, so
order does not matter."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cbctl import LocalCluster
from tests.conftest import FIXTURE_HOMES, RunningCluster, run_cli, stop_all, store_server

DEPLOYABLES = Path(__file__).resolve().parent / "deployables"
TOOLKIT = DEPLOYABLES / "toolkit.py"


@contextmanager
def module_cluster(home: Path, executors: int = 2, deploy: tuple[Path, ...] = (),
                   extra_args: tuple[str, ...] = (), store: str = "embedded") -> Iterator[RunningCluster]:
    """A cluster in ``home`` on ``store`` (a ``store_backend``: "redis" starts a redis-server of its own)."""
    with store_server(store, home.parent / f"{home.name}-redis") as (store_args, server):
        handle = RunningCluster(home, server)
        FIXTURE_HOMES.add(home)
        try:
            run_cli(home, "up", "--executors", str(executors), *store_args, *extra_args, check=True, timeout=90)
            handle.pids()  # remembered for teardown
            for path in deploy:
                handle.cli("deploy", str(path), check=True)
            yield handle
        finally:
            stop_all([handle])


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


def cache_metrics(client, after: float, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """Every executor's cache metrics from a status it sent after ``after`` (time.monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        asked = time.monotonic()
        statuses = client.cluster_info()["executors"]
        if statuses and all(asked - s["status_age_s"] > after for s in statuses.values()):
            return {e: s["metrics"]["cache"] for e, s in statuses.items()}
        if time.monotonic() > deadline:
            raise AssertionError(f"no status newer than {timeout} s ago from every executor")
        time.sleep(0.1)


def redis_module_cluster(tmp_path_factory: Any, backend: str, executors: int = 2,
                         deploy: tuple[Path, ...] = ()) -> Iterator[RunningCluster | None]:
    """For a module-scoped fixture of a module whose tests run on both store backends: its cluster on Redis
    (a redis-server of its own, with the module's executors and deploy files), or None on the embedded store,
    where the plugin's ``cbctl_cluster`` serves (see ``shared_on``)."""
    if backend == "embedded":
        yield None
        return
    with module_cluster(tmp_path_factory.mktemp(f"cb{backend}"), executors=executors, deploy=deploy,
                        store=backend) as handle:
        yield handle


@contextmanager
def shared_on(request: Any, on_redis: RunningCluster | None) -> Iterator[RunningCluster]:
    """The module's shared cluster for this test: the Redis one, or the plugin's (embedded) one."""
    if on_redis is not None:
        try:
            yield on_redis
        finally:
            on_redis.close_clients()
        return
    with view(request.getfixturevalue("cbctl_cluster")) as handle:
        yield handle
