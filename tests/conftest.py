"""Shared fixtures: real clusters, each in its own temporary CBCTL_HOME, always torn down."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cbctl
from cbctl.lifecycle import kill_processes
from cbctl.runtime.cluster import ClusterFile

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

#: The store backends a module that touches the store runs its tests on: it overrides ``store_backend`` with
#: ``@pytest.fixture(scope="module", params=STORE_BACKENDS)``.
STORE_BACKENDS = ["embedded", "redis"]


def run_cli(home: Path, *args: str, timeout: float = 60, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cbctl ARGS`` as a user would, against ``home``."""
    env = {**os.environ, "CBCTL_HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "cbctl.cli", *args], capture_output=True, text=True,
                            env=env, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"cbctl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@contextlib.contextmanager
def store_server(backend: str, directory: Path) -> Iterator[tuple[tuple[str, ...], object]]:
    """``cbctl up`` arguments for ``backend`` and the server behind them: nothing for the embedded store; a
    fresh redis-server of its own for "redis" (a new cluster must not see an earlier one's data, as a new home
    does not), stopped on exit."""
    if backend == "embedded":
        yield (), None
        return
    from tests.redis_servers import RedisServer, require_redis

    require_redis()
    server = RedisServer(directory).start()
    try:
        yield ("--store", server.url), server
    finally:
        server.stop()


class RunningCluster:
    """A cluster started by the ``cluster`` fixture; ``client()`` connects, ``cli()`` runs commands."""

    def __init__(self, home: Path, redis: object = None) -> None:
        self.home = home
        self.redis = redis  # the RedisServer behind a cluster on a Redis store (None: the embedded store)
        self._clients: list[cbctl.Client] = []

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return run_cli(self.home, *args, **kwargs)

    def client(self) -> cbctl.Client:
        client = cbctl.connect(self.home)
        self._clients.append(client)
        return client

    def cluster_file(self) -> ClusterFile:
        found = ClusterFile.read(self.home)
        assert found is not None, "cluster file missing"
        return found

    def pids(self) -> list[int]:
        found = ClusterFile.read(self.home)
        return [] if found is None else found.pids()

    def pid_of(self, name: str) -> int:
        for p in self.cluster_file().processes:
            if f"{p.role}-{p.index}" == name:
                return p.pid
        raise KeyError(name)

    def wait_for(self, predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def close_clients(self) -> None:
        for client in self._clients:
            try:
                client.close()
            except Exception:
                pass
        self._clients.clear()


@pytest.fixture(scope="module")
def store_backend(request) -> str:
    """The store the clusters of a test keep their data in: the embedded store, unless the module overrides
    this fixture with ``params=STORE_BACKENDS``, or a test asks for both with
    ``@pytest.mark.parametrize("store_backend", STORE_BACKENDS, indirect=True)``."""
    return getattr(request, "param", "embedded")


@pytest.fixture
def start_cluster(tmp_path_factory, store_backend) -> Iterator:
    """Factory: ``start_cluster(executors=2, extra_args=[...])`` -> RunningCluster; all stopped at teardown."""
    started: list[RunningCluster] = []
    servers = contextlib.ExitStack()

    def start(executors: int = 2, extra_args: tuple[str, ...] = (), home: Path | None = None) -> RunningCluster:
        home = home or tmp_path_factory.mktemp("cbhome")
        store_args, server = servers.enter_context(store_server(store_backend, tmp_path_factory.mktemp("redis")))
        handle = RunningCluster(home, server)
        started.append(handle)
        run_cli(home, "up", "--executors", str(executors), *store_args, *extra_args, check=True, timeout=90)
        return handle

    with servers:  # Redis servers stop after the clusters that use them
        yield start
        for handle in started:
            handle.close_clients()
            pids = handle.pids()
            if pids:
                run_cli(handle.home, "down", timeout=60)
            kill_processes(pids)  # anything `down` missed, so no test leaves processes behind


@pytest.fixture
def cluster(start_cluster) -> RunningCluster:
    """A running 2-executor cluster."""
    return start_cluster(executors=2)


@pytest.fixture
def deployed(cluster) -> RunningCluster:
    """A 2-executor cluster with examples/pipeline.py deployed."""
    cluster.cli("deploy", str(EXAMPLES / "pipeline.py"), check=True)
    return cluster
