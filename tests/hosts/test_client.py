"""A client on a third machine: by address and a copy of the keys (Python), or with a home holding copies of
the head's cluster.json and keys/ (the CLI); results come back to an address it advertises."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.hosts.cluster import TwoHosts, cli, python
from tests.hosts.netns import Lab

REMOTE = """
import json, sys, cbctl
with cbctl.connect(address=sys.argv[1], keys=sys.argv[2]) as c:
    c.register(lambda cb, x: (cb.getid(), x * 2), name="twice")
    c.put("from-client", {"a": 1})
    ran = [c.call("twice", i, timeout=20) for i in range(30)]
    futures = [c.call_async("twice", i) for i in range(64)]
    print(json.dumps({"ran": ran, "in_flight": [f.result(timeout=30)[1] for f in futures],
                      "get": c.get("from-client"), "reply": c.response_address}))
"""


@pytest.fixture
def hosts(lab3: Lab, tmp_path: Path) -> TwoHosts:
    return TwoHosts(lab3, tmp_path)


def test_client_on_a_third_machine_calls_puts_and_gets(hosts: TwoHosts) -> None:
    hosts.up(head_executors=1)
    hosts.join(1, "--gpu-executors", "1", "--fake-gpus", "1")
    gpu = python(hosts.client, hosts.client_home, """
import json, sys, cbctl
with cbctl.connect(address=sys.argv[1], keys=sys.argv[2]) as c:
    c.register(lambda cb: cb.getid(), name="on_gpu", gpu=True)
    print(json.dumps(c.call("on_gpu", timeout=20)))
""", hosts.address, str(hosts.client_home / "keys"))
    assert gpu == f"{hosts.node.address}/executor-1"  # a joined host's GPU executor is a GPU executor
    out = python(hosts.client, hosts.client_home, REMOTE, hosts.address, str(hosts.client_home / "keys"))
    assert {who for who, _ in out["ran"]} == {"executor-0", f"{hosts.node.address}/executor-0"}  # CPU ones
    assert [x for _, x in out["ran"]] == [2 * i for i in range(30)]
    assert out["in_flight"] == [2 * i for i in range(64)]
    assert out["get"] == {"a": 1}
    assert out["reply"].startswith(f"tcp://{hosts.client.address}:")  # its own address, not the head's
    # the CLI, from a home holding copies of the head's cluster.json and keys/
    called = cli(hosts.client, hosts.client_home, "call", "twice", "21", "--json", check=True).stdout
    assert json.loads(called)[1] == 42
    cli(hosts.client, hosts.client_home, "put", "k", "7", check=True)
    assert cli(hosts.head, hosts.head_home, "get", "k", check=True).stdout.strip() == "7"
    # `cbctl down` from a machine that is not the head refuses, and names the head
    refused = cli(hosts.client, hosts.client_home, "down")
    assert refused.returncode == 1 and "runs on another machine" in refused.stderr
    # wrong keys: a clear refusal, not a hang
    bad = python(hosts.client, hosts.client_home, """
import json, shutil, sys, cbctl, zmq.auth, pathlib, tempfile
d = pathlib.Path(tempfile.mkdtemp())
for name in ("server", "client"):
    zmq.auth.create_certificates(str(d), name)
try:
    cbctl.connect(address=sys.argv[1], keys=d)
    print(json.dumps("connected"))
except cbctl.AuthenticationError as exc:
    print(json.dumps(str(exc)))
finally:
    shutil.rmtree(d)  # the session's leftovers check fails on a key directory left in the temp directory
""", hosts.address)
    assert "refused this client's CURVE keys" in bad
    # status from another machine: the head's whole cluster
    status = json.loads(cli(hosts.client, hosts.client_home, "status", "--json", check=True).stdout)
    assert {p["host"] for p in status["processes"]} == {hosts.head.address, hosts.node.address}
    # `cbctl down` on the head dismisses the joined host too: its node supervisor leaves and exits
    cli(hosts.head, hosts.head_home, "down", check=True)
    deadline = time.monotonic() + 30
    while (hosts.node_home / "node.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (hosts.node_home / "node.json").exists()
    assert cli(hosts.node, hosts.node_home, "leave").returncode == 1  # nothing left to leave
