"""Throwaway Redis servers for tests and benchmarks: a standalone ``redis-server`` or a 3-master Redis Cluster,
on loopback ports picked here, with their data in a directory of the caller's; ``stop()`` always ends them.

Debian's ``redis-server`` package provides the binaries. Without them, tests skip with the reason, except under
``CI=true``, where a missing server is a failure (CI must run these tests).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

SERVER = "redis-server"
CLI = "redis-cli"
READY_TIMEOUT_S = 10.0
CLUSTER_READY_TIMEOUT_S = 30.0


def require_redis() -> None:
    """Skip the calling test when redis-server (and the redis-py client) are missing; fail instead under CI."""
    missing = [tool for tool in (SERVER, CLI) if shutil.which(tool) is None]
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("the redis Python package (pip install -e '.[test]')")
    if missing:
        reason = f"{', '.join(missing)} not found: install Debian's redis-server package (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


def free_port(with_bus: bool = False) -> int:
    """A loopback port nobody listens on; ``with_bus``: port + 10000 too (a cluster node's bus port)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not with_bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("found no free loopback port pair for a Redis Cluster node")


class PortTaken(Exception):
    """Another process bound the port between our pick and redis-server's bind."""


class RedisServer:
    """One ``redis-server`` process (not daemonized: its pid is ours to signal), AOF on by default."""

    def __init__(self, directory: Path, port: int | None = None, appendfsync: str = "everysec",
                 appendonly: bool = True, cluster: bool = False, extra: tuple[str, ...] = (),
                 password: str | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.fixed_port = port is not None
        self.port = port or free_port(with_bus=cluster)
        self.args = [SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                     "--appendonly", "yes" if appendonly else "no", "--appendfsync", appendfsync, "--save", "",
                     "--logfile", str(self.dir / "redis.log"), "--daemonize", "no",
                     "--maxmemory-policy", "noeviction", *extra]
        if cluster:
            self.args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf"),
                          "--cluster-node-timeout", "5000"]
        if password is not None:
            self.args += ["--requirepass", password]
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        """Start the server and wait for PING. A port picked here may be taken by another test between the pick
        and the bind (tests run in parallel): then another port is tried, twice at most."""
        for attempt in range(3):
            try:
                return self._start()
            except PortTaken:
                if attempt == 2 or self.fixed_port:
                    raise
                self._repick_port()
        raise AssertionError("unreachable")

    def _repick_port(self) -> None:
        self.port = free_port(with_bus=self.cluster)
        self.args[self.args.index("--port") + 1] = str(self.port)

    def _start(self) -> RedisServer:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace") if (self.dir / "redis.log").exists() else ""
                if "Address already in use" in log[-2000:]:
                    raise PortTaken(self.port)
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.process.returncode}: "
                                   f"see {self.dir / 'redis.log'}")
            try:
                if self.cli("PING", check=False, timeout=1).stdout.strip() == "PONG":
                    return self
            except subprocess.TimeoutExpired:  # something else answers on the port: redis-server will exit
                pass
            time.sleep(0.02)
        self.kill9()  # never leave a server behind that a caller cannot stop (it has no handle yet)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {READY_TIMEOUT_S} s")

    def cli(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        auth = ["--no-auth-warning", "-a", self.password] if self.password is not None else []
        return subprocess.run([CLI, "-h", "127.0.0.1", "-p", str(self.port), *auth, *args], capture_output=True,
                              text=True, timeout=timeout, check=check)

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """End the server (SIGTERM: it flushes the AOF; SIGKILL if it does not exit in 10 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill9()


class RedisClusterServers:
    """``masters`` cluster-enabled servers joined with ``redis-cli --cluster create`` (no replicas)."""

    def __init__(self, directory: Path, masters: int = 3, appendfsync: str = "everysec") -> None:
        self.nodes = [RedisServer(Path(directory) / f"node-{i}", cluster=True, appendfsync=appendfsync)
                      for i in range(masters)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run([CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                           capture_output=True, text=True, timeout=60, check=True)
            deadline = time.monotonic() + CLUSTER_READY_TIMEOUT_S
            while not all("cluster_state:ok" in node.cli("CLUSTER", "INFO").stdout for node in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Redis Cluster on {addresses} did not reach cluster_state:ok")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
