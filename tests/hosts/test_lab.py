"""The lab itself: separate machines as far as cbctl can tell (addresses, pids), a link that can be cut, and
nothing left behind."""

from __future__ import annotations

import sys

from tests.hosts.netns import Lab

SERVE = """
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1); s.settimeout(20)
print(s.getsockname()[1], flush=True)
conn, peer = s.accept(); conn.sendall(b"hello " + peer[0].encode()); conn.close()
"""
FETCH = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
print(c.recv(100).decode())
"""


def test_hosts_are_separate_machines(lab3: Lab) -> None:
    head, node = lab3["head"], lab3["node"]
    # each host is pid 1's world of its own: the same pid number names different processes
    for host in (head, node):
        assert host.run(["cat", "/proc/1/comm"], check=True).stdout.strip() == "sleep"
        out = host.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True).stdout
        assert int(out) < 100  # a fresh pid namespace, not the machine's
    assert head.address != node.address
    addresses = node.run(["ip", "-4", "-o", "addr"], check=True).stdout
    assert node.address in addresses and head.address not in addresses
    server = head.start([sys.executable, "-c", SERVE, head.address], stdout=-1, text=True)
    port = server.stdout.readline().strip()
    out = node.run([sys.executable, "-c", FETCH, head.address, port, "10"], check=True).stdout
    assert out.strip() == f"hello {node.address}"
    server.wait(timeout=10)


def test_cut_link_stops_traffic_and_restore_brings_it_back(lab3: Lab) -> None:
    head, node = lab3["head"], lab3["node"]
    server = head.start([sys.executable, "-c", SERVE, head.address], stdout=-1, text=True)
    port = server.stdout.readline().strip()
    node.cut_link()
    assert node.run([sys.executable, "-c", FETCH, head.address, port, "1"]).returncode != 0
    node.restore_link()
    out = node.run([sys.executable, "-c", FETCH, head.address, port, "10"], check=True).stdout
    assert out.strip() == f"hello {node.address}"
    server.wait(timeout=10)


def test_lab_leaves_nothing_behind() -> None:
    from tests.hosts.conftest import require_lab

    require_lab()
    with Lab(["a", "b"]) as lab:
        inits = [host.init_pid for host in lab.hosts.values()]
        ours = [name for name in Lab.namespaces() if name.startswith(lab.id + "-")]
        assert len(ours) == 3
        lab["a"].start(["sleep", "600"])
    assert not [name for name in Lab.namespaces() if name.startswith(lab.id + "-")]
    import psutil

    assert not any(psutil.pid_exists(pid) for pid in inits)


def test_lab_is_removed_on_failure() -> None:
    from tests.hosts.conftest import require_lab

    require_lab()
    lab = Lab(["a"])
    try:
        with lab:
            raise RuntimeError("a failing test")
    except RuntimeError:
        pass
    assert not [name for name in Lab.namespaces() if name.startswith(lab.id + "-")]
