"""Who may talk to a cluster: the user alone over ipc, holders of the cluster's CURVE keys over TCP.

ipc sockets live in the cluster directory, which is private to its user (0700, see ``cluster.secure_home``),
so the kernel guards them. A TCP port is reachable by every user of the machine (and the network), so with
``--listen tcp://...`` ``cbctl up`` generates two CURVE keypairs in ``HOME/keys/``: the *server* pair, which
every TCP-bound socket presents, and the *client* pair, which every socket connecting to a TCP address
presents. Each process with a TCP-bound socket runs a ZAP handler (pyzmq's ``ThreadAuthenticator``) that
admits only the client public key, so a party without the keys completes no handshake and delivers no frame:
a plain socket fails the mechanism check, a CURVE socket with any other keypair is denied by ZAP.

Every party holds both pairs: each one binds (its own address; a client's reply socket, which executors
connect to) and connects (to its peers). So holding ``HOME/keys`` is holding the cluster; nothing here tells
parties apart, and nothing needs to, because any holder may register code anyway.

The keys travel with the zmq context: ``new_context(keys)`` returns a context that carries them, and
``bind``/``connect`` read them from the socket's context. Sockets are configured once, when they bind or
connect, and only for tcp:// addresses, so ipc clusters (and the per-message path) pay nothing.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from cbctl.errors import AuthenticationError
from cbctl.runtime.cluster import KEYS_DIR

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

# zmq.auth (and the asyncio it imports) only where keys are made, read or checked: an ipc cluster, which is the
# default, never needs it, and every process of one (the command line's too) would pay for its import.
from cbctl.runtime.defaults import HANDSHAKE_REFUSALS_CONCLUSIVE, ZAP_DENIAL_LOG_EVERY

log = logging.getLogger(__name__)

#: The ``auth`` field of the cluster file: what a client must present to a cluster's TCP sockets.
AUTH_CURVE = "curve"
AUTH_NONE = "none"
_ZAP_DOMAIN = "cbctl"  # pyzmq looks the CURVE check up by the socket's domain ("*" only for none)


@dataclass(frozen=True)
class CurveKeys:
    """The cluster's two keypairs, z85-encoded as pyzmq reads them. ``repr`` never shows a secret key, so one
    cannot reach a log or an error message by accident."""

    server_public: bytes
    client_public: bytes
    server_secret: bytes = field(repr=False)
    client_secret: bytes = field(repr=False)


def keys_dir(home: Path) -> Path:
    return home / KEYS_DIR


def generate_keys(home: Path) -> CurveKeys:
    """Fresh keypairs in ``HOME/keys/`` (0700; every file 0600), replacing any earlier ones, so keys copied
    from an earlier cluster in this home stop working."""
    directory = keys_dir(home)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)  # mkdir's mode is masked by the umask
    import zmq.auth

    for name in ("server", "client"):
        for path in map(Path, zmq.auth.create_certificates(str(directory), name)):
            path.chmod(0o600)
    return load_keys(home)


def remove_keys(home: Path) -> None:
    """Remove a keys directory left by an earlier TCP cluster (an ipc or ``--no-auth`` cluster has none)."""
    shutil.rmtree(keys_dir(home), ignore_errors=True)


def load_keys(home: Path) -> CurveKeys:
    """The keys of the cluster in ``home``, or ``AuthenticationError`` saying how to get them."""
    return load_keys_from(keys_dir(home), home)


def load_keys_from(directory: Path, home: Path | None = None) -> CurveKeys:
    """The keys in ``directory`` (a copy of a cluster's ``keys/``), or ``AuthenticationError``."""
    import zmq.auth

    home = home if home is not None else directory
    try:
        server_public, server_secret = zmq.auth.load_certificate(directory / "server.key_secret")
        client_public, client_secret = zmq.auth.load_certificate(directory / "client.key_secret")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "malformed"
        raise AuthenticationError(
            f"the cluster in {home} listens on TCP with CURVE authentication, and its keys in {directory} cannot "
            f"be read ({reason}): run as the user who ran `cbctl up`, or copy that keys directory here") from None
    if server_secret is None or client_secret is None:
        raise AuthenticationError(f"the keys in {directory} lack their secret halves: copy the whole keys "
                                  "directory (*.key_secret files included) from the machine that ran `cbctl up`")
    return CurveKeys(server_public, client_public, server_secret, client_secret)


class CurveContext(zmq.Context):
    """A zmq context that knows the cluster's keys (``None``: no authentication) and owns the ZAP handler of
    its TCP-bound sockets, which it stops before it terminates (the handler's sockets would block ``term``)."""

    curve_keys: CurveKeys | None = None
    _authenticator: ThreadAuthenticator | None = None

    def ensure_authenticator(self, keys: CurveKeys) -> None:
        with _start_lock:
            if self._authenticator is not None:
                return
            from zmq.auth.thread import ThreadAuthenticator

            authenticator = ThreadAuthenticator(self, log=logging.getLogger(f"{__name__}.zap"))
            authenticator.start()
            authenticator.configure_curve_callback(_ZAP_DOMAIN, _ClusterClients(keys.client_public))
            self._authenticator = authenticator

    def stop_authenticator(self) -> None:
        with _start_lock:
            authenticator, self._authenticator = self._authenticator, None
        if authenticator is not None:
            authenticator.stop()

    def term(self) -> None:
        self.stop_authenticator()
        super().term()

    def destroy(self, linger: int | None = None) -> None:
        self.stop_authenticator()
        super().destroy(linger)


_start_lock = threading.Lock()  # a Client is thread-safe: two threads must not start two ZAP handlers


class _ClusterClients:
    """ZAP's CURVE check: only the cluster's client public key is admitted. Denials are logged (public keys
    only), sparsely, so a client hammering the port cannot fill the disk."""

    def __init__(self, client_public: bytes) -> None:
        self.client_public = client_public
        self.denied = 0

    def callback(self, _domain: str, key: bytes) -> bool:
        if key == self.client_public:
            return True
        self.denied += 1
        if self.denied % ZAP_DENIAL_LOG_EVERY == 1:
            log.warning("refused a TCP connection presenting an unknown CURVE key %s (%d refused so far)",
                        key.decode(errors="replace"), self.denied)
        return False


def new_context(keys: CurveKeys | None) -> CurveContext:
    """A context whose sockets use ``keys`` on TCP (``None``: plain TCP, an ipc or ``--no-auth`` cluster)."""
    context = CurveContext()
    context.curve_keys = keys
    return context


def cluster_keys(home: Path, auth: str) -> CurveKeys | None:
    """The keys a party needs for the cluster in ``home`` whose cluster file says ``auth``."""
    return load_keys(home) if auth == AUTH_CURVE else None


def connect(sock: zmq.Socket, address: str, keys: CurveKeys | None = None) -> None:
    """``sock.connect(address)``, as a CURVE client with the cluster's keys when ``address`` is TCP and the
    socket's context (or ``keys``) has them."""
    if address.startswith("tcp://"):
        keys = keys or getattr(sock.context, "curve_keys", None)
        if keys is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.client_public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.client_secret)
    sock.connect(address)


class HandshakeWatch:
    """Tells a cluster that refused our keys from one that is merely silent, so a request that gets no answer
    can say which (keys from an earlier ``cbctl up``, say, instead of "did not answer in 15 s"). Watches one
    socket's CURVE handshakes through a zmq monitor; for request/reply sockets, not the per-call path."""

    _FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                 | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        self._monitor = sock.get_monitor_socket(self._FAILURES)
        self.refusals = 0

    def refused(self, at_least: int = 1) -> bool:
        """Whether ``at_least`` handshakes of the socket failed since the watch began."""
        while self._monitor.poll(0):
            self._monitor.recv_multipart()
            self.refusals += 1
        return self.refusals >= at_least

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close()


def watch_handshakes(sock: zmq.Socket, address: str, keys: CurveKeys | None = None) -> HandshakeWatch | None:
    """A ``HandshakeWatch`` on ``sock`` if connecting it to ``address`` uses CURVE (call before connecting)."""
    if address.startswith("tcp://") and (keys or getattr(sock.context, "curve_keys", None)) is not None:
        return HandshakeWatch(sock)
    return None


def wait_for_reply(sock: zmq.Socket, timeout_s: float, watch: HandshakeWatch | None, address: str,
                   home: str | Path) -> bool:
    """Poll ``sock`` for up to ``timeout_s``; ``AuthenticationError`` as soon as the peer clearly refuses our
    keys (and at the deadline if it refused at all), rather than a silent wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if watch is not None and watch.refused():
                raise keys_refused(address, home)
            return False
        slice_ms = int(remaining * 1000) + 1 if watch is None else min(100, int(remaining * 1000) + 1)
        if sock.poll(slice_ms):
            return True
        if watch is not None and watch.refused(HANDSHAKE_REFUSALS_CONCLUSIVE):
            raise keys_refused(address, home)


def keys_refused(address: str, home: str | Path) -> AuthenticationError:
    return AuthenticationError(
        f"{address} refused this client's CURVE keys ({Path(home) / KEYS_DIR} does not hold the running cluster's "
        "keys: copied from an earlier `cbctl up`?): copy the keys directory again from the machine that ran it")


def bind(sock: zmq.Socket, address: str) -> None:
    """``sock.bind(address)``, as a CURVE server admitting only the cluster's clients when it is TCP."""
    if address.startswith("tcp://"):
        _serve_curve(sock)
    sock.bind(address)


def bind_to_random_port(sock: zmq.Socket, host: str) -> str:
    """Bind on a random port of ``host`` (``tcp://HOST``), as ``bind`` does; returns the full address."""
    _serve_curve(sock)
    port = sock.bind_to_random_port(host)
    return f"{host}:{port}"


def _serve_curve(sock: zmq.Socket) -> None:
    context = sock.context
    keys = getattr(context, "curve_keys", None)
    if keys is None:
        return
    context.ensure_authenticator(keys)  # before the first handshake can ask it
    sock.setsockopt(zmq.ZAP_DOMAIN, _ZAP_DOMAIN.encode())
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret)

