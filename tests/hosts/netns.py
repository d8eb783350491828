"""A small lab of "machines" for tests of cbctl across hosts: one network namespace per host, joined by veth
pairs to a bridge that lives in a namespace of its own, on a private subnet the lab creates; each host also has
its own pid namespace (and a mount namespace with its own /proc), so a pid means nothing across hosts, as it
would not between machines.

Layout for ``Lab(["head", "node", "client"])`` (names are prefixed with the lab's id, ``cbt<pid>x<n>``):

    ns <id>-sw:   bridge br0 <- veth s<i>  ---  veth eth0 (10.<a>.<b>.<i+1>/24) in ns <id>-<host i>

Each host runs one init (``sleep``, pid 1 of its pid namespace, started through ``ip netns exec ... unshare
--pid --fork --mount-proc``); every command of that host enters its namespaces with ``nsenter``. Killing the
init makes the kernel kill every process of the host at once, which is how a test loses a whole machine.
``close`` kills every init, then deletes every namespace (their veths go with them); nothing is created in the
root namespace. Labs left by a test process that died are removed by the next lab (``remove_stale``).

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2's ``ip``, util-linux's ``unshare`` and ``nsenter``.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

PREFIX = "cbt"
_COUNTER = iter(range(1, 1 << 30))
COMMAND_TIMEOUT_S = 20.0  # any one ip/nsenter set-up command; they take milliseconds


class LabUnavailable(Exception):
    """This machine (or user) cannot build namespaces; the message says why."""


def missing_requirement() -> str:
    """Why a lab cannot be built here ('' when it can): root, and the tools."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs these tests as root)"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"the `{tool}` tool is not installed"
    probe = f"{PREFIX}{os.getpid()}probe"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if result.returncode != 0:
        return f"`ip netns add` failed here: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=COMMAND_TIMEOUT_S)
    return ""


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if result.returncode != 0:
        raise LabUnavailable(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def remove_stale() -> None:
    """Delete namespaces of labs whose test process is gone (a run killed before its teardown)."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX) or "x" not in name:
            continue
        owner = name[len(PREFIX):].split("x", 1)[0]
        if owner.isdigit() and not psutil.pid_exists(int(owner)):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=COMMAND_TIMEOUT_S)


@dataclass
class Host:
    """One machine of the lab: its network namespace, address, and the init of its pid namespace."""

    name: str
    netns: str
    address: str  # its IPv4 address on the lab's subnet
    switch_port: str  # the veth end in the switch namespace: down cuts this host's link
    lab: Lab
    launcher: subprocess.Popen | None = None
    init_pid: int = 0  # the host's pid 1, as the root pid namespace sees it
    started: list[subprocess.Popen] = field(default_factory=list)

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` as a command line that runs inside this host (its network, pid and mount namespaces)."""
        if not self.init_pid:
            raise RuntimeError(f"host {self.name} is not running")
        return ["nsenter", "-t", str(self.init_pid), "-n", "-p", "-m", "--", *args]

    def run(self, args: Sequence[str], timeout: float = 60.0, env: dict[str, str] | None = None,
            check: bool = False, input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(args), capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **(env or {})}, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"on {self.name}: {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def start(self, args: Sequence[str], env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
        """A long-running command inside this host; it dies with the host (``kill``) or at ``Lab.close``."""
        proc = subprocess.Popen(self.command(args), env={**os.environ, **(env or {})}, **popen)
        self.started.append(proc)
        return proc

    def cut_link(self) -> None:
        _ip("-n", self.lab.switch, "link", "set", self.switch_port, "down")

    def restore_link(self) -> None:
        _ip("-n", self.lab.switch, "link", "set", self.switch_port, "up")

    def kill(self) -> None:
        """Lose the machine: SIGKILL its pid 1, and the kernel kills every process in its pid namespace."""
        if self.init_pid:
            try:
                os.kill(self.init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.launcher is not None:
            try:
                self.launcher.wait(timeout=COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait(timeout=COMMAND_TIMEOUT_S)
        for proc in self.started:
            try:
                proc.wait(timeout=COMMAND_TIMEOUT_S)  # nsenter exits once its child in the namespace is gone
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=COMMAND_TIMEOUT_S)
        self.init_pid = 0


class Lab:
    """Hosts on one private subnet (see the module docstring); a context manager that always cleans up."""

    def __init__(self, names: Sequence[str]) -> None:
        self.id = f"{PREFIX}{os.getpid()}x{next(_COUNTER)}"
        self.switch = f"{self.id}-sw"
        # 10.<a>.<b>.0/24: private, and inside namespaces that reach nothing else, so it collides with nothing
        self.subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        self.hosts: dict[str, Host] = {}
        self._names = list(names)
        self._namespaces: list[str] = []

    def __enter__(self) -> Lab:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def open(self) -> None:
        remove_stale()
        self._add_netns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, name in enumerate(self._names):
            netns = f"{self.id}-{i}"
            self._add_netns(netns)
            port = f"s{i}"
            _ip("link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", port, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
            address = f"{self.subnet}.{i + 1}"
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            host = self.hosts[name] = Host(name, netns, address, port, self)
            self._start_init(host)

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)

    def _start_init(self, host: Host) -> None:
        host.launcher = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "unshare", "--pid", "--fork", "--mount-proc", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                children = psutil.Process(host.launcher.pid).children()
            except psutil.Error:
                children = []
            if children and children[0].name() == "sleep":
                host.init_pid = children[0].pid
                return
            if host.launcher.poll() is not None:
                raise LabUnavailable(f"the pid namespace of {host.name} did not start "
                                     f"(exit {host.launcher.returncode})")
            time.sleep(0.01)
        raise LabUnavailable(f"the pid namespace of {host.name} did not start within {COMMAND_TIMEOUT_S} s")

    def close(self) -> None:
        """Kill every host's processes, then delete every namespace (and with them, every veth)."""
        for host in self.hosts.values():
            host.kill()
        for name in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=COMMAND_TIMEOUT_S)
        self._namespaces.clear()

    @staticmethod
    def namespaces() -> list[str]:
        """Every lab namespace on the machine (tests check that theirs are gone)."""
        return [line.split()[0] for line in _ip("netns", "list").splitlines()
                if line.split() and line.split()[0].startswith(PREFIX)]


def home_dir(base: Path, host: str) -> Path:
    """A private home for ``host``'s cbctl under ``base`` (each machine has its own home)."""
    home = base / host
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home
