"""The security rules that need no cluster: --listen parsing, when --no-auth is refused, the cluster
directory's permissions, and the CURVE keys' files (the handshakes themselves: tests/integration/test_security.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cbctl.errors import AuthenticationError, InvalidArgument
from cbctl.lifecycle import check_auth, is_loopback, parse_listen, prepare_home
from cbctl.runtime import cluster
from cbctl.runtime.supervisor.spec import ClusterSpec
from cbctl.runtime.wire import auth


@pytest.fixture(autouse=True)
def _socket_dirs_removed(tmp_path: Path):
    """prepare_home makes a home's socket directory, under the temp directory when the home's path is long (as
    pytest's can be): removed after each test, as `cbctl down` would."""
    yield
    for home in [tmp_path, *(p for p in tmp_path.rglob("*") if p.is_dir())]:
        cluster.remove_socket_dir(home)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("listen, parsed", [
    ("", ("", 0)),
    ("tcp://127.0.0.1", ("tcp://127.0.0.1", 0)),
    ("tcp://127.0.0.1:7100", ("tcp://127.0.0.1", 7100)),
    ("tcp://0.0.0.0:1", ("tcp://0.0.0.0", 1)),
    ("tcp://[::1]:7100", ("tcp://[::1]", 7100)),
    ("tcp://localhost", ("tcp://localhost", 0)),
])
def test_parse_listen(listen, parsed):
    assert parse_listen(listen) == parsed


@pytest.mark.parametrize("listen", ["127.0.0.1", "ipc:///tmp/x", "tcp://", "tcp://127.0.0.1:", "tcp://h:70000", "tcp://h:0",
                                    "tcp://h:port", "tcp://a:1:2", "tcp://h/x"])
def test_parse_listen_refuses_malformed(listen):
    with pytest.raises(InvalidArgument, match="tcp://HOST or tcp://HOST:PORT"):
        parse_listen(listen)


@pytest.mark.parametrize("listen, loopback", [
    ("tcp://127.0.0.1", True), ("tcp://127.1.2.3", True), ("tcp://localhost", True), ("tcp://[::1]", True),
    ("tcp://0.0.0.0", False), ("tcp://*", False), ("tcp://192.168.1.10", False), ("tcp://eth0", False),
])
def test_is_loopback(listen, loopback):
    assert is_loopback(listen) is loopback


def test_curve_is_on_for_tcp_unless_refused():
    assert check_auth("", no_auth=False) is False  # ipc: the directory's permissions guard it
    assert check_auth("tcp://127.0.0.1", no_auth=False) is True
    assert check_auth("tcp://0.0.0.0", no_auth=False) is True
    assert check_auth("tcp://127.0.0.1", no_auth=True) is False
    with pytest.raises(InvalidArgument, match="would let anyone who can reach that address run code"):
        check_auth("tcp://0.0.0.0", no_auth=True)
    with pytest.raises(InvalidArgument, match="only with --listen"):
        check_auth("", no_auth=True)


def test_secure_home_creates_private_directories_and_tightens_open_ones(tmp_path):
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    (home / "data" / "sub").mkdir(parents=True)
    for path, path_mode in ((home, 0o755), (home / "logs", 0o777), (home / "data" / "sub", 0o750)):
        path.chmod(path_mode)
    open_files = [home / "cluster.json", home / "logs" / "store-0.log", home / "data" / "sub" / "snapshot"]
    for path in open_files:
        path.write_text("x")
        path.chmod(0o644)
    not_ours = home / "notes.txt"  # a home may hold the user's own files: cbctl leaves them as they are
    not_ours.write_text("x")
    not_ours.chmod(0o644)
    private = home / "data" / "wal"
    private.write_text("x")
    private.chmod(0o600)

    tightened = cluster.secure_home(home)

    assert set(tightened) == {home, home / "logs", home / "data", home / "data" / "sub", *open_files}
    for directory in (home, home / "logs", home / "data", home / "data" / "sub", cluster.socket_dir(home)):
        assert mode(directory) == 0o700, directory
    for path in [*open_files, private]:
        assert mode(path) == 0o600, path
    assert mode(not_ours) == 0o644
    assert cluster.secure_home(home) == []  # nothing left to fix


def test_prepare_home_says_what_it_tightened(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    notes = prepare_home(home, ClusterSpec(executors=1))
    assert len(notes) == 1 and "private to you" in notes[0] and str(home) in notes[0]
    assert prepare_home(home, ClusterSpec(executors=1)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user's needs root")
def test_a_socket_directory_owned_by_another_user_is_refused(tmp_path):
    home = tmp_path / ("long-" * 30) / "home"  # too long for ipc paths: sockets go under the temp directory
    sockets = cluster.socket_dir(home)
    assert not sockets.is_relative_to(home)
    sockets.mkdir(mode=0o777)
    try:
        os.chown(sockets, 4242, 4242)
        with pytest.raises(InvalidArgument, match="belongs to another user"):
            cluster.secure_home(home)
    finally:
        sockets.rmdir()


def test_keys_are_private_fresh_per_up_and_never_shown(tmp_path):
    home = tmp_path / "home"
    prepare_home(home, ClusterSpec(executors=1, listen="tcp://127.0.0.1", curve=True))
    keys_dir = auth.keys_dir(home)
    assert mode(keys_dir) == 0o700
    names = sorted(p.name for p in keys_dir.iterdir())
    assert names == ["client.key", "client.key_secret", "server.key", "server.key_secret"]
    assert all(mode(keys_dir / name) == 0o600 for name in names)
    first = auth.load_keys(home)
    assert first.server_secret not in repr(first).encode() and first.client_secret not in repr(first).encode()

    second = auth.generate_keys(home)
    assert {second.server_public, second.client_public}.isdisjoint({first.server_public, first.client_public})

    prepare_home(home, ClusterSpec(executors=1))  # an ipc cluster keeps no keys around
    assert not keys_dir.exists()
    with pytest.raises(AuthenticationError, match="copy that keys directory"):
        auth.load_keys(home)
    assert auth.cluster_keys(home, auth.AUTH_NONE) is None
