"""Store URLs (``redis://``, ``rediss://``, ``redis+cluster://``, ``rediss+cluster://``), connecting to them,
and the server checks ``cbctl up --store`` makes before it uses one.

    redis://[USER:PASS@]HOST:PORT[/DB]            one Redis server (DB 0 unless given)
    rediss://[USER:PASS@]HOST:PORT[/DB]           the same over TLS
    redis+cluster://[USER:PASS@]HOST:PORT[,HOST:PORT...]   a Redis Cluster (any of its nodes; DB 0 only)
    rediss+cluster://...                          a Redis Cluster over TLS

A password never goes into a log, ``status``, ``top`` or ``cluster.json``: those show ``redacted()``.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbctl.errors import CbctlError, InvalidArgument

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")

#: maxmemory-policy values that never drop a key: anything else evicts data the cluster relies on
SAFE_MEMORY_POLICIES = ("noeviction",)


def is_store_url(address: str) -> bool:
    """Whether a store address names a Redis backend (else it is the embedded store node's zmq address)."""
    return address.split("://", 1)[0] in SCHEMES and "://" in address


@dataclass(frozen=True)
class StoreURL:
    scheme: str
    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    db: int = 0

    @property
    def cluster(self) -> bool:
        return self.scheme.endswith("+cluster")

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    def redacted(self) -> str:
        """The URL with the password replaced by ``***`` (what logs and the cluster file show)."""
        auth = ""
        if self.username or self.password:
            auth = urllib.parse.quote(self.username or "", safe="") + (":***" if self.password else "") + "@"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        return f"{self.scheme}://{auth}{hosts}" + (f"/{self.db}" if self.db else "")

    def connect(self, **options: Any) -> Any:
        """A redis-py client: ``redis.Redis`` or ``redis.cluster.RedisCluster`` (RESP2: plain replies, the
        shape every redis-py version parses the same way)."""
        redis = redis_py()
        from redis.cluster import ClusterNode, RedisCluster

        common = {"username": self.username, "password": self.password, "protocol": 2, **options}
        if self.tls:
            common["ssl"] = True
        if self.cluster:
            return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.hosts], **common)
        host, port = self.hosts[0]
        return redis.Redis(host=host, port=port, db=self.db, **common)


def redis_py() -> Any:
    """The redis package (an optional dependency: the ``redis`` extra), or a ``CbctlError`` saying how to get it."""
    try:
        import redis
    except ImportError:
        raise CbctlError("the store is Redis, and the redis package is missing: pip install 'cbctl[redis]'") from None
    return redis


def parse_store_url(text: str) -> StoreURL:
    """Parse ``--store``; ``InvalidArgument`` naming what is wrong and the forms accepted."""
    forms = "redis://[USER:PASS@]HOST:PORT[/DB], rediss://..., or redis+cluster://HOST:PORT[,HOST:PORT...]"
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise InvalidArgument(f"--store {text!r} is not a Redis URL: use {forms}")
    userinfo, at, hostpart = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    hostpart, slash, dbpart = hostpart.partition("/")
    db = 0
    if slash and dbpart:
        if not dbpart.isdigit():
            raise InvalidArgument(f"--store database {dbpart!r} is not a number: use /0 to /15 (or none)")
        db = int(dbpart)
    hosts = []
    for entry in hostpart.split(","):
        host, colon, port = entry.rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"--store {_redact_text(text)!r}: {entry!r} is not HOST:PORT; use {forms}")
        hosts.append((host, int(port)))
    url = StoreURL(scheme, tuple(hosts), username, password, db)
    if url.cluster and db:
        raise InvalidArgument(f"--store {url.redacted()!r}: a Redis Cluster has database 0 only: drop /{db}")
    if not url.cluster and len(hosts) > 1:
        raise InvalidArgument(f"--store {url.redacted()!r} names {len(hosts)} servers: use redis+cluster:// for a "
                              "Redis Cluster, or one HOST:PORT")
    return url


def _redact_text(text: str) -> str:
    scheme, _, rest = text.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}" if at else text


def check_server(url: StoreURL, durability: str) -> list[str]:
    """What `cbctl up` checks before it uses ``url``: reachable, no evicting ``maxmemory-policy`` (refused: it
    drops keys silently), and ``appendonly yes`` (refused unless ``durability`` is "none", since a restart would
    lose every write). Returns warnings to show; raises ``CbctlError`` with the fix for a refusal."""
    redis = redis_py()
    warnings: list[str] = []
    client = url.connect(socket_timeout=5, socket_connect_timeout=5)
    try:
        try:
            infos = _per_master(client, "INFO", "server", "persistence", "memory")
        except redis.AuthenticationError as exc:
            raise CbctlError(f"Redis at {url.redacted()} refused the credentials: {exc}") from None
        except redis.RedisError as exc:
            raise CbctlError(f"could not reach Redis at {url.redacted()}: {exc}: start it, or fix --store") from None
        for node, info in infos.items():
            policy = info.get("maxmemory_policy", "noeviction")
            if policy not in SAFE_MEMORY_POLICIES:
                raise CbctlError(
                    f"Redis at {node} has maxmemory-policy {policy}, which evicts keys and would silently lose "
                    "cluster data: run `CONFIG SET maxmemory-policy noeviction` there (and in redis.conf)")
            if not int(info.get("aof_enabled", 0)):
                text = (f"Redis at {node} has appendonly no: a Redis restart loses every write since its last "
                        "snapshot")
                if durability != "none":
                    raise CbctlError(f"{text}; run `CONFIG SET appendonly yes` there (and in redis.conf), or accept "
                                     "that with `cbctl up --durability none`")
                warnings.append(text)
            elif durability == "always" and info.get("aof_fsync", "") not in ("", "always"):
                warnings.append(f"Redis at {node} fsyncs its AOF {info.get('aof_fsync')}, not on every write: "
                                "--durability always needs `CONFIG SET appendfsync always` there")
    finally:
        client.close()
    return warnings


def _per_master(client: Any, *command: str) -> dict[str, dict[str, Any]]:
    """INFO from every master (one server: itself), by "host:port"."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        nodes = client.get_primaries()
        return {node.name: client.info(*command[1:], target_nodes=node) for node in nodes}
    kwargs = client.connection_pool.connection_kwargs
    return {f"{kwargs.get('host')}:{kwargs.get('port')}": client.info(*command[1:])}


#: The file in the cluster directory (0600, in a 0700 home) holding the store URL with its password; the
#: cluster file, `cbctl up`'s supervisor command line and every log show only the redacted URL.
SECRET_FILE = "store-url"


def save_secret(home: Path, url_text: str | None) -> None:
    """Keep the full store URL for the cluster's processes and clients (``None``: an embedded store, remove it)."""
    path = home / SECRET_FILE
    if url_text is None:
        path.unlink(missing_ok=True)
        return
    tmp = home / (SECRET_FILE + ".tmp")
    tmp.write_text(url_text)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def resolve_address(home: Path, address: str) -> str:
    """The address to connect to for a cluster file's ``store_address``: a Redis URL comes from the secret
    file (it has the password), anything else is used as it is."""
    if not is_store_url(address):
        return address
    try:
        return (home / SECRET_FILE).read_text().strip()
    except FileNotFoundError:
        raise CbctlError(f"the cluster in {home} keeps its data in Redis ({address}), and {home / SECRET_FILE} "
                         "with its URL is missing: restart the cluster with `cbctl up --store URL`") from None
