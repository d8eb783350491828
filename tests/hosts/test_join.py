"""`cbctl join` and `cbctl leave` across real network and pid namespaces: a second host's executors take calls
like the head's, leave without losing one, and a join that cannot work says why."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.hosts.cluster import HEAD_PORT, TwoHosts, cli, copy_join_files, python
from tests.hosts.netns import Lab

WHO = """
import collections, json, cbctl
with cbctl.connect() as c:
    c.register(lambda cb, x: cb.getid(), name="who")
    print(json.dumps(collections.Counter(c.call("who", i, timeout=20) for i in range(int(__import__("sys").argv[1])))))
"""

BIG = """
import collections, json, cbctl, numpy as np
array = np.arange(4 << 20, dtype=np.uint8)
with cbctl.connect() as c:
    c.register(lambda cb, a: [cb.getid(), int(a.sum()), a.nbytes, (a * 2).nbytes], name="big_in")
    c.register(lambda cb, n: __import__("numpy").full(n, 7, dtype="uint8"), name="big_out")
    ran = [c.call("big_in", array, timeout=30) for _ in range(int(__import__("sys").argv[1]))]
    wrong = [r for r in ran if r[1:] != [int(array.sum()), array.nbytes, array.nbytes]]
    back = [c.call("big_out", 3 << 20, timeout=30) for _ in range(6)]
    print(json.dumps({"ran": sorted({r[0] for r in ran}), "wrong": wrong,
                      "back": all(b.shape == (3 << 20,) and int(b.sum()) == 7 * (3 << 20) for b in back)}))
"""

UNDER_LOAD = """
import json, sys, threading, time, cbctl
stop = time.monotonic() + float(sys.argv[1])
results, errors = [], []
with cbctl.connect() as c:
    c.register(lambda cb, x: (__import__("time").sleep(0.01), cb.getid())[1], name="slow_who")
    print("ready", flush=True)
    while time.monotonic() < stop:
        futures = [c.call_async("slow_who", i) for i in range(8)]
        for f in futures:
            try:
                results.append(f.result(timeout=30))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"results": results, "errors": errors}))
"""


@pytest.fixture
def hosts(lab3: Lab, tmp_path: Path) -> TwoHosts:
    return TwoHosts(lab3, tmp_path)


def test_joined_executors_take_calls_and_leave_without_losing_one(hosts: TwoHosts) -> None:
    hosts.up(head_executors=1)
    hosts.join(executors=2)
    node_ids = {f"{hosts.node.address}/executor-0", f"{hosts.node.address}/executor-1"}
    ran = python(hosts.head, hosts.head_home, WHO, "60")
    assert set(ran) == node_ids | {"executor-0"}, ran
    # large values reach the other host's executors, and come back, whole (zmq frames: no shared memory there)
    big = python(hosts.head, hosts.head_home, BIG, "24")
    assert big["wrong"] == [] and big["back"], big
    assert set(big["ran"]) & node_ids, big
    status = json.loads(cli(hosts.head, hosts.head_home, "status", "--json", check=True).stdout)
    by_name = {p["name"]: p for p in status["processes"]}
    assert {by_name[i]["host"] for i in node_ids} == {hosts.node.address}
    assert by_name["executor-0"]["host"] == hosts.head.address
    hosts_summary = {h["host"]: h for h in status["health"]["hosts"]}
    assert hosts_summary[hosts.head.address]["head"] and hosts_summary[hosts.head.address]["executors"] == 1
    node_row = hosts_summary[hosts.node.address]
    assert node_row["executors"] == 2 and 0 <= node_row["heartbeat_age_s"] < 2
    top = json.loads(cli(hosts.head, hosts.head_home, "top", "--json", check=True).stdout)
    assert top["version"] == 1
    assert {e["id"]: e["host"] for e in top["executors"]} == {
        "executor-0": hosts.head.address, **{i: hosts.node.address for i in node_ids}}
    text = cli(hosts.head, hosts.head_home, "status", check=True).stdout
    assert f"host {hosts.node.address}  2 " in text and "heartbeat" in text
    # leave while a client calls: every call answers, none with an error
    load = hosts.head.start([sys.executable, "-c", UNDER_LOAD, "6"], env={"CBCTL_HOME": str(hosts.head_home)},
                            stdout=-1, text=True)
    try:
        assert load.stdout.readline().strip() == "ready"
        left = cli(hosts.node, hosts.node_home, "leave", check=True)
        assert f"{hosts.node.address} left" in left.stdout
        out, _ = load.communicate(timeout=90)
    finally:
        if load.poll() is None:
            load.kill()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["errors"] == []
    assert node_ids & set(report["results"]), "the node took no call before it left"
    ran = python(hosts.head, hosts.head_home, WHO, "20")
    assert set(ran) == {"executor-0"}, ran  # the head no longer places work there
    assert not (hosts.node_home / "node.json").exists()
    cli(hosts.head, hosts.head_home, "down", check=True)


def test_join_refuses_clearly(hosts: TwoHosts, tmp_path: Path) -> None:
    node, home = hosts.node, hosts.node_home
    # head unreachable (no cluster up there yet), after a bounded wait
    hosts.up(head_executors=1)
    cli(hosts.head, hosts.head_home, "down", check=True)
    result = cli(node, home, "join", hosts.address, "--executors", "1", "--timeout", "2")
    assert result.returncode == 1 and "did not answer within 2 s" in result.stderr, result.stderr
    hosts.up(head_executors=1)
    # keys missing
    copy_join_files(hosts.head_home, home)
    for key in (home / "keys").iterdir():
        key.unlink()
    result = cli(node, home, "join", hosts.address, "--executors", "1")
    assert result.returncode == 1 and "keys" in result.stderr and "cannot be read" in result.stderr, result.stderr
    # keys of another cluster: the head refuses the handshake
    other = tmp_path / "other"
    cli(hosts.client, other, "up", "--listen", f"tcp://{hosts.client.address}", "--executors", "1", check=True)
    copy_join_files(hosts.head_home, home)
    for key in (other / "keys").iterdir():
        (home / "keys" / key.name).write_bytes(key.read_bytes())
    result = cli(node, home, "join", hosts.address, "--executors", "1", "--timeout", "10")
    assert result.returncode == 1 and "refused this client's CURVE keys" in result.stderr, result.stderr
    cli(hosts.client, other, "down", check=True)
    # no cluster.json, or one of another cluster
    (home / "cluster.json").unlink()
    result = cli(node, home, "join", hosts.address)
    assert result.returncode == 1 and "cluster.json is missing" in result.stderr
    copy_join_files(hosts.head_home, home)
    result = cli(node, home, "join", f"tcp://{hosts.head.address}:{HEAD_PORT + 1}")
    assert result.returncode == 1 and "is not the cluster at" in result.stderr
    # another protocol version: the head answers with a refusal every version reads
    script = (
        "import json, sys; import cbctl.runtime.wire.frames as frames; frames.PROTOCOL_VERSION = 99\n"
        "from cbctl.runtime.supervisor import node\n"
        "node.main(['--home', sys.argv[1], '--spec', json.dumps(dict(head=sys.argv[2], advertise='tcp://' + "
        "sys.argv[3], host=sys.argv[3], executors=1, timeout_s=10))])\n")
    result = node.run([sys.executable, "-c", script, str(home), hosts.address, node.address], timeout=60)
    assert result.returncode == 1
    error = (home / "startup-error.txt").read_text()
    assert "protocol version" in error and "99" in error, error
    # nothing secret in any output or log of the whole session
    secrets = {line.split('"')[1] for f in (hosts.head_home / "keys").glob("*.key_secret")
               for line in f.read_text().splitlines() if "secret-key" in line}
    logs = [p.read_text(errors="replace") for h in (hosts.head_home, home) for p in (h / "logs").glob("*.log")]
    assert secrets and not any(s in text for s in secrets for text in logs)
    cli(hosts.head, hosts.head_home, "down", check=True)
