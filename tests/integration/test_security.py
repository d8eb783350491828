"""Security: the cluster directory is private, TCP sockets admit only holders of the cluster's CURVE keys, an
unauthenticated non-loopback listener is refused, and no secret key shows anywhere a user or log reader looks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import time
import uuid
from pathlib import Path

import cloudpickle
import pytest
import zmq
import zmq.auth

import cbctl
from cbctl.lifecycle import kill_processes
from cbctl.runtime.cluster import ClusterFile, socket_dir
from cbctl.runtime.lattices import LWWLattice
from cbctl.runtime.wire import serialization
from cbctl.runtime.wire.auth import generate_keys, load_keys
from cbctl.runtime.wire.messages import CallRequest, PutRequest, RegisterFunction, SupervisorRequest
from tests.conftest import run_cli

#: How long an intruder's frames get to land (they land in about a millisecond when nothing stops them).
INTRUSION_WAIT_S = 1.5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def mark_ran(cb, key):
    """The function an intruder tries to run: it leaves a trace in the store if it ever does."""
    cb.put(key, "ran")
    return key


def intrude(found: ClusterFile, curve_server_key: bytes | None, tag: str, stop: bool = True) -> list[bytes]:
    """What a process without the cluster's keys would try: register code, call a function, put a value and
    (with ``stop``) stop the cluster, over raw zmq sockets; plain TCP if ``curve_server_key`` is None, else CURVE
    with a keypair of its own and the cluster's public server key. Returns every frame a server answered with."""
    context = zmq.Context()
    try:
        replies_sock = context.socket(zmq.PULL)
        port = replies_sock.bind_to_random_port("tcp://127.0.0.1")
        targets = {
            found.scheduler_addresses[0]: [
                RegisterFunction(1, f"evil-{tag}", cloudpickle.dumps(mark_ran), {}).pack(),
                CallRequest(uuid.uuid4().hex, "mark_ran", serialization.encode([f"called-{tag}"]), {},
                            f"tcp://127.0.0.1:{port}", False, "lww", []).pack(),
            ],
            found.store_address: [
                PutRequest(1, f"put-{tag}", LWWLattice(time.time_ns(), "intruder",
                                                       serialization.encode("pwned")).to_wire()).pack(),
            ],
            found.control_address: [SupervisorRequest(1, "stop", {}).pack()] if stop else [],
        }
        sockets = []
        for address, frames in targets.items():
            sock = context.socket(zmq.DEALER)
            if curve_server_key is not None:
                public, secret = zmq.curve_keypair()
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve_server_key, public, secret
            sock.connect(address)
            for frame in frames:
                sock.send(frame, zmq.NOBLOCK)
            sockets.append(sock)
        answers: list[bytes] = []
        deadline = time.monotonic() + INTRUSION_WAIT_S
        poller = zmq.Poller()
        for sock in [*sockets, replies_sock]:
            poller.register(sock, zmq.POLLIN)
        while (remaining := deadline - time.monotonic()) > 0:
            for sock, _ in poller.poll(int(remaining * 1000) + 1):
                answers.append(sock.recv())
        return answers
    finally:
        context.destroy(linger=0)


def traces(client: cbctl.Client, tag: str) -> dict[str, object]:
    """What an intrusion tagged ``tag`` would have left, read by an authorised client."""
    left: dict[str, object] = {}
    if f"evil-{tag}" in {f["name"] for f in client.list()["functions"]}:
        left["registered"] = f"evil-{tag}"
    for key in (f"called-{tag}", f"put-{tag}"):
        try:
            left[key] = client.get(key)
        except cbctl.NoSuchKey:
            pass
    return left


def secrets_of(home: Path) -> list[str]:
    found = []
    for path in (home / "keys").glob("*.key_secret"):
        _, secret = zmq.auth.load_certificate(path)
        found.append(secret.decode())
    assert len(found) == 2, "the keys directory should hold the server's and the client's secret keys"
    return found


def test_cluster_directory_is_private_and_an_open_one_is_tightened(start_cluster, tmp_path):
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    home.chmod(0o755)
    (home / "logs").chmod(0o755)
    old_log = home / "logs" / "old.log"
    old_log.write_text("from an earlier cluster\n")
    old_log.chmod(0o644)
    handle = start_cluster(executors=1, extra_args=("--listen", f"tcp://127.0.0.1:{free_port()}"), home=home)
    handle.client().put("k", "v")  # the store's log has a record

    directories = [home, home / "logs", home / "data", home / "keys", socket_dir(home)]
    assert {str(d): oct(mode(d)) for d in directories} == {str(d): "0o700" for d in directories}
    files = [home / "cluster.json", old_log, *(home / "logs").glob("*.log"), *(home / "data").rglob("*"),
             *(home / "keys").iterdir()]
    files = [f for f in files if f.is_file()]
    assert len(list((home / "keys").iterdir())) == 4  # server and client: public and secret each
    assert any(f.parent.name == "data" for f in files), "the store wrote no file to check"
    assert {str(f): oct(mode(f)) for f in files} == {str(f): "0o600" for f in files}
    sockets = [p for p in socket_dir(home).iterdir() if p.is_socket()]
    assert all(p.stat().st_uid == home.stat().st_uid for p in sockets)


def test_no_secret_key_in_logs_status_top_or_cluster_file(start_cluster):
    handle = start_cluster(executors=1, extra_args=("--listen", f"tcp://127.0.0.1:{free_port()}"))
    found = handle.cluster_file()
    server_public, _ = zmq.auth.load_certificate(handle.home / "keys" / "server.key")
    intrude(found, server_public, "secrets")  # a refusal is logged: with the intruder's public key only
    shown = [handle.cli(*command, check=True).stdout for command in (("status",), ("status", "--json"),
                                                                     ("top", "--json"), ("ls", "--json"))]
    shown += [path.read_text() for path in (handle.home / "logs").glob("*.log")]
    shown.append((handle.home / "cluster.json").read_text())
    assert json.loads((handle.home / "cluster.json").read_text())["auth"] == "curve"
    assert any("refused a TCP connection" in text for text in shown), "the refusal should be logged"
    for secret in secrets_of(handle.home):
        assert not [text for text in shown if secret in text]
    shown_keys = repr(load_keys(handle.home))
    assert not [secret for secret in secrets_of(handle.home) if secret in shown_keys]


def test_without_the_keys_nothing_registers_runs_or_lands(start_cluster):
    port = free_port()
    handle = start_cluster(executors=1, extra_args=("--listen", f"tcp://127.0.0.1:{port}"))
    found = handle.cluster_file()
    assert found.scheduler_addresses == [f"tcp://127.0.0.1:{port}"]  # PORT is the first scheduler's
    client = handle.client()
    client.register(mark_ran, name="mark_ran")
    assert client.call("mark_ran", "authorised-call", timeout=20) == "authorised-call"
    assert client.get("authorised-call") == "ran"
    pids = handle.pids()

    server_public, _ = zmq.auth.load_certificate(handle.home / "keys" / "server.key")
    assert intrude(found, None, "plain") == []
    assert intrude(found, server_public, "curve") == []

    assert traces(client, "plain") == {} and traces(client, "curve") == {}
    assert handle.pids() == pids  # nothing crashed, nothing restarted, the cluster was not stopped
    assert all(p["state"] == "ready" for p in json.loads(handle.cli("status", "--json", check=True).stdout)
               ["processes"])
    client.put("after", 1)  # and authorised clients are still served
    assert client.call("mark_ran", "after-call", timeout=20) == "after-call"
    assert client.get("after") == 1 and client.get("after-call") == "ran"

    keys = handle.home / "keys"
    keys.rename(handle.home / "keys-elsewhere")
    try:
        with pytest.raises(cbctl.AuthenticationError, match="keys"):
            cbctl.connect(handle.home)
        result = handle.cli("ls")
        assert result.returncode == 1 and "copy that keys directory" in result.stderr
    finally:
        (handle.home / "keys-elsewhere").rename(keys)


def test_the_same_intrusion_succeeds_without_auth(start_cluster):
    """The control for the test above: its frames do register, run and land on a --no-auth cluster, so an
    empty result there means the keys stopped them, not that the frames were wrong."""
    handle = start_cluster(executors=1, extra_args=("--listen", "tcp://127.0.0.1", "--no-auth"))
    assert not (handle.home / "keys").exists()
    client = handle.client()
    client.register(mark_ran, name="mark_ran")
    found = handle.cluster_file()
    pids = handle.pids()
    try:
        intrude(found, None, "open", stop=False)
        handle.wait_for(lambda: len(traces(client, "open")) == 3, timeout=20, what="the intrusion's traces")
        intrude(found, None, "open-stop")
        handle.wait_for(lambda: not handle.pids(), timeout=60, what="the intruder's stop request to stop the cluster")
    finally:
        kill_processes(pids)


@pytest.mark.parametrize("args, expected", [
    (("--listen", "tcp://0.0.0.0", "--no-auth"), "--no-auth with --listen tcp://0.0.0.0 would let anyone"),
    (("--listen", "tcp://10.1.2.3:7000", "--no-auth"), "drop --no-auth"),
    (("--no-auth",), "--no-auth applies only with --listen"),
    (("--listen", "tcp://127.0.0.1:99999"), "must look like tcp://HOST or tcp://HOST:PORT"),
    (("--listen", "127.0.0.1"), "must look like tcp://HOST"),
])
def test_up_refuses_unsafe_or_malformed_listen(tmp_path, args, expected):
    result = run_cli(tmp_path / "home", "up", "--executors", "1", *args, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "home" / "cluster.json").exists()


def test_up_refuses_a_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path / "home", "up", "--executors", "1", "--listen", f"tcp://127.0.0.1:{port}")
    assert result.returncode == 1 and "pick another port" in result.stderr, result.stderr


def test_restarted_processes_keep_authenticating_on_their_addresses(start_cluster):
    port = free_port()
    handle = start_cluster(executors=1, extra_args=("--listen", f"tcp://127.0.0.1:{port}"))
    client = handle.client()
    client.register(mark_ran, name="mark_ran")
    for name in ("executor-0", "scheduler-0"):
        old_pid = handle.pid_of(name)
        os.kill(old_pid, signal.SIGKILL)
        handle.wait_for(lambda name=name, old_pid=old_pid: handle.pid_of(name) != old_pid
                        and name in ready_processes(handle), timeout=30, what=f"{name} to restart")
    assert handle.cluster_file().scheduler_addresses == [f"tcp://127.0.0.1:{port}"]
    assert client.call("mark_ran", "after-restarts", timeout=20) == "after-restarts"  # the same client, reconnected
    server_public, _ = zmq.auth.load_certificate(handle.home / "keys" / "server.key")
    assert intrude(handle.cluster_file(), server_public, "restarted") == []
    assert traces(client, "restarted") == {}


def ready_processes(handle) -> set[str]:
    status = json.loads(handle.cli("status", "--json", check=True).stdout)
    return {p["name"] for p in status["processes"] if p["state"] == "ready"}


def test_a_copy_of_cluster_file_and_keys_is_enough_and_other_keys_are_refused_at_once(start_cluster, tmp_path):
    """What a client on another machine would do (here on the same one): a home of its own holding copies of
    cluster.json and keys/. With keys of another cluster, requests fail at once, naming the keys."""
    handle = start_cluster(executors=1, extra_args=("--listen", "tcp://127.0.0.1"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    shutil.copy(handle.home / "cluster.json", elsewhere)
    shutil.copytree(handle.home / "keys", elsewhere / "keys")
    with cbctl.connect(elsewhere) as client:
        client.put("from-elsewhere", 1)
        assert client.get("from-elsewhere") == 1
    assert run_cli(elsewhere, "status", "--json", check=True).returncode == 0

    generate_keys(elsewhere)  # now it holds some other cluster's keys
    with cbctl.connect(elsewhere) as client:
        started = time.monotonic()
        with pytest.raises(cbctl.AuthenticationError, match="refused this client's CURVE keys"):
            client.list()
        assert time.monotonic() - started < 5, "a refusal should not wait for the 15 s control timeout"
    result = run_cli(elsewhere, "status")
    assert result.returncode == 1 and "refused this client's CURVE keys" in result.stderr, result.stderr
