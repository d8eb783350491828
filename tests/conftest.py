"""Shared fixtures: real clusters, each in its own temporary CBCTL_HOME, always torn down."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil
import pytest

import cbctl
from cbctl.runtime.cluster import ClusterFile, remove_socket_dir
from tests.leftovers import cluster_processes, describe, kill_all, processes_naming

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

#: The store backends a module that touches the store runs its tests on: it overrides ``store_backend`` with
#: ``@pytest.fixture(scope="module", params=STORE_BACKENDS)``.
STORE_BACKENDS = ["embedded", "redis"]
#: Homes whose fixture (``start_cluster``, ``module_cluster``) stops them at its own teardown.
FIXTURE_HOMES: set[Path] = set()
#: Homes a test ran `cbctl up` in itself (most expect a refusal): ``stop_stray_clusters`` stops them after it.
_stray_homes: list[Path] = []


def run_cli(home: Path, *args: str, timeout: float = 60, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cbctl ARGS`` as a user would, against ``home``."""
    if args[:1] == ("up",) and home not in FIXTURE_HOMES:
        _stray_homes.append(home)
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
        self.seen: dict[int, psutil.Process] = {}  # every process its cluster file named: teardown stops them all
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
        pids = [] if found is None else found.pids()
        if found is not None:
            self.seen.update((proc.pid, proc) for proc in cluster_processes(found) if proc.pid not in self.seen)
        return pids

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


def stop_everything(home: Path, known: Iterable[psutil.Process] = ()) -> None:
    """Teardown of a cluster home, whatever failed before: `cbctl down` when a cluster file is there (one that
    hangs or fails is not an error here), then SIGKILL of every process that still names the home or that a
    cluster file named (``known``: those seen earlier, which psutil tells from a later process with the same
    pid), and removal of its socket directory."""
    found = ClusterFile.read(home)
    procs = {proc.pid: proc for proc in known}
    procs.update((proc.pid, proc) for proc in (cluster_processes(found) if found is not None else ()))
    try:
        if found is not None:
            run_cli(home, "down", timeout=60)
    except subprocess.TimeoutExpired:
        pass  # the kill below stops what a hanging `down` did not
    finally:
        procs.update((proc.pid, proc) for proc in processes_naming([home]))
        still = kill_all(procs.values())
        remove_socket_dir(home, found.control_address if found is not None else "")
        remove_socket_dir(home)
        assert not still, f"teardown could not stop: {[describe(p) for p in still]}"


#: What multiprocessing's forkserver keeps in the temp directory: a supervisor killed with SIGKILL (as fault
#: tests do on purpose) cannot remove it. Not cbctl's; removed with the session's temp directory.
FORKSERVER_DIR_PREFIX = "pymp-"


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory) -> Iterator[None]:
    """The suite's own check that it leaks nothing, per process that runs tests (each xdist worker has a
    basetemp of its own). Every process started during the session gets a temp directory of its own (TMPDIR),
    so what it leaves there (socket directories of long homes, benchmarks' temporary homes) is this session's,
    and its processes carry the mark. After the session, any process that is a child of this one, carries the
    mark, or names a path under the basetemp or that directory (a cluster home on its command line or in
    CBCTL_HOME), and was not there before, fails the run, as does anything but the forkserver's directory
    left in the temp directory. Both are then removed, the processes by pid."""
    basetemp = tmp_path_factory.getbasetemp()  # before TMPDIR changes: the homes' paths stay as short
    private = Path(tempfile.mkdtemp(prefix="cbtests-"))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(private)
    marks = {"TMPDIR": str(private)}

    def ours() -> dict[tuple[int, float], psutil.Process]:
        procs = processes_naming([basetemp, private], marks) + psutil.Process().children(recursive=True)
        found = {}
        for proc in procs:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found[(proc.pid, proc.create_time())] = proc
            except psutil.Error:
                pass
        return found

    before = ours()
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        deadline = time.monotonic() + 5  # a process killed by the last teardown may take a moment to go
        while (left := [p for key, p in ours().items() if key not in before]) and time.monotonic() < deadline:
            time.sleep(0.1)
        files = [_show(p, private) for p in sorted(private.iterdir()) if not p.name.startswith(FORKSERVER_DIR_PREFIX)]
        described = [describe(p) for p in left]
        kill_all(left)
        shutil.rmtree(private, ignore_errors=True)
        problems = ([f"{len(left)} process(es) outlived the tests: {described}"] if left else [])
        problems += [f"left in the temp directory {private}: {files} (cbctl-HASH, 16 hex digits: a long home's "
                     "sockets)"] if files else []
        if problems:
            pytest.fail("the test session left things behind: " + "; ".join(problems), pytrace=False)


def _show(path: Path, root: Path, most: int = 8) -> str:
    """``path`` relative to ``root``, with the first few things inside it (to tell who left it)."""
    inside = sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.is_dir() else []
    more = f", +{len(inside) - most}" if len(inside) > most else ""
    return f"{path.relative_to(root)}" + (f" [{', '.join(inside[:most])}{more}]" if inside else "")


@pytest.fixture(autouse=True)
def stop_stray_clusters() -> Iterator[None]:
    """A `cbctl up` a test runs itself gets a fixture's teardown: if a regression lets an `up` that should be
    refused start a cluster, or one fails half-way, nothing it started outlives the test."""
    _stray_homes.clear()
    yield
    while _stray_homes:
        stop_everything(_stray_homes.pop())


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
        FIXTURE_HOMES.add(home)
        run_cli(home, "up", "--executors", str(executors), *store_args, *extra_args, check=True, timeout=90)
        handle.pids()  # remembered for teardown
        return handle

    with servers:  # Redis servers stop after the clusters that use them
        try:
            yield start
        finally:
            stop_all(started)


def stop_all(handles: list[RunningCluster]) -> None:
    """``stop_everything`` for each handle, each one even when an earlier one failed."""
    if not handles:
        return
    handle = handles.pop()
    try:
        handle.close_clients()
        stop_everything(handle.home, handle.seen.values())
    finally:
        FIXTURE_HOMES.discard(handle.home)
        stop_all(handles)


@pytest.fixture
def cluster(start_cluster) -> RunningCluster:
    """A running 2-executor cluster."""
    return start_cluster(executors=2)


@pytest.fixture
def deployed(cluster) -> RunningCluster:
    """A 2-executor cluster with examples/pipeline.py deployed."""
    cluster.cli("deploy", str(EXAMPLES / "pipeline.py"), check=True)
    return cluster
