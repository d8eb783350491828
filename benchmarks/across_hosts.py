"""``python -m benchmarks.latency --hosts 2``: the lab around the latency benchmark (see its docstring).

Builds two hosts of network and pid namespaces (``tests/hosts/netns.py``; root only), brings the head up on one
(with one fake GPU executor, so every CPU function runs on the other host), joins the other with the CPU
executors, starts the relay's two hops on the joined host, and runs the measuring half of the benchmark inside
the head, whose report it prints as it is. Everything it started is gone when it returns, also on error.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tests.hosts.netns import Lab, missing_requirement

HEAD_PORT = 7100
RELAY_PORTS = (7201, 7202, 7203)  # hop A's PULL, hop B's PULL (on the joined host), the client's PULL (head)

REPO = str(Path(__file__).resolve().parent.parent)  # entering a host's mount namespace loses the cwd: say it
HOP = "import sys; from benchmarks.latency import _relay; _relay(sys.argv[1], sys.argv[2])"


def run_across_hosts(args: argparse.Namespace, argv: list[str]) -> None:
    reason = missing_requirement()
    if reason:
        raise SystemExit(f"--hosts 2 needs network namespaces: {reason}")
    passed, skip = [], False
    for arg in argv:  # the same arguments, less --hosts (the measuring run is one host's view)
        if skip or arg.startswith("--hosts="):
            skip = False
        elif arg == "--hosts":
            skip = True
        else:
            passed.append(arg)
    with tempfile.TemporaryDirectory(prefix="cbhosts-") as tmp, Lab(["head", "node"]) as lab:
        head, node = lab["head"], lab["node"]
        head_home, node_home = Path(tmp) / "head", Path(tmp) / "node"
        address = f"tcp://{head.address}:{HEAD_PORT}"

        def cli(host, home: Path, *command: str) -> None:
            host.run([sys.executable, "-m", "cbctl.cli", *command], env={"CBCTL_HOME": str(home)}, timeout=180,
                     check=True)

        cli(head, head_home, "up", "--listen", address, "--executors", "0", "--gpu-executors", "1",
            "--fake-gpus", "1")
        try:
            node_home.mkdir(mode=0o700)
            shutil.copy(head_home / "cluster.json", node_home)
            shutil.copytree(head_home / "keys", node_home / "keys")
            cli(node, node_home, "join", address, "--executors", str(args.executors))
            a, b, reply = (f"tcp://{node.address}:{RELAY_PORTS[0]}", f"tcp://{node.address}:{RELAY_PORTS[1]}",
                           f"tcp://{head.address}:{RELAY_PORTS[2]}")
            node.start([sys.executable, "-c", HOP, a, b], env={"PYTHONPATH": REPO})
            node.start([sys.executable, "-c", HOP, b, reply], env={"PYTHONPATH": REPO})
            result = head.run([sys.executable, "-m", "benchmarks.latency", *passed, "--in-lab", str(head_home), a,
                               reply], timeout=3600, env={"PYTHONPATH": REPO})
            sys.stdout.write(result.stdout)
            if result.returncode != 0:
                raise SystemExit(f"the measuring run failed:\n{result.stderr}")
        finally:
            head.run([sys.executable, "-m", "cbctl.cli", "down"], env={"CBCTL_HOME": str(head_home)}, timeout=120)
