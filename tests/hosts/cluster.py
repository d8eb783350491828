"""cbctl across the lab's hosts: a head (``cbctl up --listen``) on one host, ``cbctl join`` on another, each
with a home of its own; commands and scripts run inside the hosts as a user there would run them."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tests.hosts.netns import Host, Lab

HEAD_PORT = 7100


def cli(host: Host, home: Path, *args: str, timeout: float = 90, check: bool = False):
    return host.run([sys.executable, "-m", "cbctl.cli", *args], env={"CBCTL_HOME": str(home)}, timeout=timeout,
                    check=check)


def python(host: Host, home: Path, script: str, *args: str, timeout: float = 90) -> object:
    """Run ``script`` on ``host`` (CBCTL_HOME=home) and return what it printed last, as JSON."""
    result = host.run([sys.executable, "-c", script, *args], env={"CBCTL_HOME": str(home)}, timeout=timeout,
                      check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def copy_join_files(head_home: Path, home: Path) -> None:
    """What the head's `cbctl up` says to copy: cluster.json and keys/ (a machine of the lab shares our disk)."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy(head_home / "cluster.json", home / "cluster.json")
    shutil.copytree(head_home / "keys", home / "keys", dirs_exist_ok=True)


class TwoHosts:
    """A head with ``head_executors`` and a joined node with ``node_executors``."""

    def __init__(self, lab: Lab, base: Path) -> None:
        self.lab = lab
        self.head, self.node, self.client = lab["head"], lab["node"], lab["client"]
        self.head_home, self.node_home, self.client_home = base / "head", base / "node", base / "client"
        self.address = f"tcp://{self.head.address}:{HEAD_PORT}"

    def up(self, head_executors: int = 1, *extra: str) -> None:
        cli(self.head, self.head_home, "up", "--listen", self.address, "--executors", str(head_executors), *extra,
            check=True)
        copy_join_files(self.head_home, self.node_home)
        copy_join_files(self.head_home, self.client_home)

    def join(self, executors: int = 2, *extra: str) -> None:
        cli(self.node, self.node_home, "join", self.address, "--executors", str(executors), *extra, check=True,
            timeout=150)
