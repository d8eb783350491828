"""``RedisStoreClient``: the store client of a cluster whose store is Redis (``cbctl up --store redis://...``).

Same methods as the embedded ``StoreClient``, so executors, schedulers and the client library need no other
change. How each maps onto Redis:

- a key K lives in the Redis key ``cb:K`` (cbctl's keys stay apart from anything else in the database), and
  cbctl's own keys ``__cb/R`` in ``cbr:{cb}R``: one cluster slot, with a SET indexing them (``cbr:{cb}index``),
  so the schedulers' registry refresh (every 2 s) lists them without a SCAN of the whole database;
- ``put_lattice``: the merge script (``merge.lua``), which also publishes the merged value on K's channel;
- ``get_lattices``: MGET (per node on a cluster); a key MGET does not find may be a set lattice, which is a
  native Redis SET: those are read with SMEMBERS in one more round trip;
- ``delete``: a tombstone merge, not DEL, so that deletes order with writes by last-writer-wins, as today;
- ``list_keys``: SCAN on every master, then tombstones are left out;
- ``subscribe_and_get`` / ``subscribe``: through the executor's ``PushBridge`` (pushes.py), when it has one;
- ``stats``: INFO of every master.

Connection errors (Redis restarting, loading its AOF, a cluster failing over) are retried with backoff up to
the retry budget, then ``StoreUnavailable``, as with the embedded store; retrying a merge is safe (idempotent).
Not thread-safe, like ``StoreClient``: one per thread, or guarded by the owner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
import zmq

from cbctl.errors import CbctlError, InvalidArgument
from cbctl.runtime.defaults import (
    REDIS_RETRY_FIRST_S,
    REDIS_RETRY_MAX_S,
    RESERVED_PREFIX,
    STORE_REQUEST_TIMEOUT_S,
    STORE_RETRY_BUDGET_S,
    TRIGGER_WATCH_POLL_S,
    TRIGGER_WATCH_TIMEOUT_S,
)
from cbctl.runtime.lattices import Lattice, LWWLattice, SetLattice, lattice_from_wire
from cbctl.runtime.redis_store.merge import PUBLISH, SCRIPT_ERROR_PREFIX, Merger
from cbctl.runtime.redis_store.pushes import PushBridge, SubscribeTimeout
from cbctl.runtime.redis_store.url import StoreURL, parse_store_url
from cbctl.runtime.store_client import StoreAccess, StoreUnavailable
from cbctl.runtime.wire import serialization
from cbctl.runtime.writer_clock import WriterClock

KEY_PREFIX = "cb:"
RESERVED_KEY_PREFIX = "cbr:{cb}"  # the hash tag {cb} puts every reserved key in one cluster slot, with the index
RESERVED_INDEX = RESERVED_KEY_PREFIX + "index"  # no reserved key maps here: theirs all go on with "/"
#: Where the trigger relay (triggers.py) leaves its counters for ``stats``.
TRIGGER_STATS_KEY = RESERVED_PREFIX + "trigger-stats"
#: The trigger relay writes a trigger's created_ns here once it watches the trigger's prefix.
TRIGGER_WATCHED_PREFIX = RESERVED_PREFIX + "trigger-watched/"
_TOMBSTONE = msgpack.packb(["lww", 0, "", None, True])
_LWW_HEAD = _TOMBSTONE[:5]  # an LWW value's first 5 bytes: a 5-array header, then "lww"
_TOMBSTONE_TAIL = _TOMBSTONE[-2:]  # ... nil value, tombstone True: the last two bytes of an LWW tombstone
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})
T = TypeVar("T")


class _Raced(Exception):
    """A key changed type between two reads of one get (a set key rewritten): the get is retried."""


class RedisStoreClient(StoreAccess):
    def __init__(self, address: str | StoreURL, writer_id: str,
                 request_timeout_s: float = STORE_REQUEST_TIMEOUT_S,
                 retry_budget_s: float = STORE_RETRY_BUDGET_S) -> None:
        import redis
        from redis.cluster import RedisCluster

        self.url = parse_store_url(address) if isinstance(address, str) else address
        self.address = self.url.redacted()
        self.writer_id = writer_id
        # lww stamps never at or below this writer's earlier ones; the merge script does not report a later
        # version that beat a put, so on Redis a put from a clock behind another writer's is not re-stamped
        self.clock = WriterClock()
        self._timeout_s = request_timeout_s
        self._retry_budget_s = retry_budget_s
        self._redis = self.url.connect(socket_timeout=request_timeout_s, socket_connect_timeout=request_timeout_s)
        self.cluster = isinstance(self._redis, RedisCluster)
        self._merge = Merger(self._redis, PUBLISH)
        # pub/sub channels are server-wide, not per database: the database number keeps clusters apart
        self.channel_prefix = f"cb{self.url.db}:" if self.url.db else KEY_PREFIX
        self.pushes: PushBridge | None = None
        self.requests = 0  # round trips asked for (tests count a cache hit's store requests with it)
        # set by the executor per call, as on the embedded store's client; Redis does not carry it to the trigger
        # relay yet, so --max-trigger-depth is not enforced on a Redis store (see README)
        self.trigger_depth = 0
        # (BusyLoadingError, a restarted server still reading its AOF, is a ConnectionError)
        self._retryable = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
                           redis.exceptions.TryAgainError, redis.exceptions.ClusterError,
                           redis.exceptions.MasterDownError, redis.exceptions.ReadOnlyError, _Raced)
        self._response_error = redis.ResponseError

    # --- plumbing -----------------------------------------------------------------------------------

    def _retrying(self, operation: Callable[[], T]) -> T:
        self.requests += 1
        deadline = time.monotonic() + self._retry_budget_s
        delay = REDIS_RETRY_FIRST_S
        while True:
            try:
                return operation()
            except self._retryable as exc:
                if time.monotonic() + delay >= deadline:
                    raise StoreUnavailable(
                        f"Redis at {self.address} did not answer for {self._retry_budget_s:.0f} s ({exc}): check "
                        "that it is running and reachable") from None
                time.sleep(delay)  # backoff between attempts at a server that is down, not a synchronisation
                delay = min(delay * 2, REDIS_RETRY_MAX_S)
            except self._response_error as exc:
                text = str(exc)
                if text.startswith(SCRIPT_ERROR_PREFIX):  # the merge script refused the value
                    raise InvalidArgument(text[len(SCRIPT_ERROR_PREFIX):].split(" script: ")[0]) from None
                raise CbctlError(f"Redis at {self.address} refused a request: {text}") from None

    @staticmethod
    def redis_key(key: str) -> str:
        """Where ``key`` lives in Redis (user keys cannot collide with reserved ones: another prefix)."""
        if key.startswith(RESERVED_PREFIX):
            return RESERVED_KEY_PREFIX + key[len(RESERVED_PREFIX) - 1:]  # keeps the "/": never "index"
        return KEY_PREFIX + key

    @staticmethod
    def key_of(name: str) -> str:
        if name.startswith(RESERVED_KEY_PREFIX):
            return RESERVED_PREFIX[:-1] + name[len(RESERVED_KEY_PREFIX):]
        return name[len(KEY_PREFIX):]

    # --- lattice level ------------------------------------------------------------------------------

    def get_lattices(self, keys: list[str]) -> list[Lattice | None]:
        names = [self.redis_key(key) for key in keys]
        return self._retrying(lambda: self._read(names))

    def read(self, keys: list[str]) -> tuple[list[Lattice | None], list[int]]:
        """The keys' lattices, and the positions of ephemeral values: none (Redis holds no ephemeral values)."""
        return self.get_lattices(keys), []

    def _read(self, names: list[str]) -> list[Lattice | None]:
        raws = self._redis.mget_nonatomic(names) if self.cluster else self._redis.mget(names)
        out: list[Lattice | None] = [None if raw is None else lattice_from_wire(msgpack.unpackb(raw, raw=False))
                                     for raw in raws]
        missing = [i for i, raw in enumerate(raws) if raw is None]
        if missing:  # absent, or a set lattice (a native Redis SET, which MGET does not return)
            pipe = self._redis.pipeline(transaction=False)
            for i in missing:
                pipe.smembers(names[i])
            for i, members in zip(missing, pipe.execute(raise_on_error=False)):
                if isinstance(members, Exception):  # became a string since the MGET: read it again
                    raise _Raced(names[i])
                if members:
                    out[i] = SetLattice(frozenset(msgpack.unpackb(m, raw=False) for m in members))
        return out

    def put_lattice(self, key: str, lattice: Lattice) -> int:
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"a key must be a non-empty string, got {key!r}")
        packed = msgpack.packb(lattice.to_wire())
        name = self.redis_key(key)
        channel = self.channel_prefix + key
        index = RESERVED_INDEX if key.startswith(RESERVED_PREFIX) else None
        self._retrying(lambda: self._merge(name, packed, channel, index))
        return 0

    def put_ephemeral(self, key: str, lattice: Lattice, ttl_s: float = 0.0) -> None:
        raise InvalidArgument(f"could not write {key!r} as an ephemeral value: ephemeral puts live in the embedded "
                              "store's memory, and this cluster's store is Redis; use a durable put instead")

    def delete(self, key: str) -> bool:
        """Delete ``key`` (a tombstone, stamped by this writer's clock); True, as a put here (see ``clock``)."""
        self.put_lattice(key, LWWLattice(self.clock.stamp(key), self.writer_id, None, tombstone=True))
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        return self._retrying(lambda: self._list(prefix))

    def _list(self, prefix: str) -> list[str]:
        names: set[bytes] = set()
        if prefix.startswith(RESERVED_PREFIX) or RESERVED_PREFIX.startswith(prefix):  # cbctl's own: the index
            wanted = self.redis_key(prefix if prefix.startswith(RESERVED_PREFIX) else RESERVED_PREFIX).encode()
            names.update(n for n in self._redis.smembers(RESERVED_INDEX) if n.startswith(wanted))
        if not prefix.startswith(RESERVED_PREFIX):
            pattern = (KEY_PREFIX + prefix).translate(_GLOB_SPECIAL) + "*"
            names.update(self._redis.scan_iter(match=pattern, count=1000))
        return self._live(sorted(names))

    def _live(self, names: list[bytes]) -> list[str]:
        """``names`` (Redis keys) whose value is not a tombstone, as cbctl keys, in order."""
        if not names:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.getrange(name, 0, 4)
            pipe.getrange(name, -2, -1)
        ends = pipe.execute(raise_on_error=False)
        live = []
        for i, name in enumerate(names):
            head, tail = ends[2 * i], ends[2 * i + 1]
            # an error is WRONGTYPE: a set lattice, which exists only while it has elements
            if isinstance(head, Exception) or not (head == _LWW_HEAD and tail == _TOMBSTONE_TAIL):
                live.append(self.key_of(name.decode()))
        return sorted(live)

    # --- executor caches ----------------------------------------------------------------------------

    def enable_pushes(self, context: zmq.Context, sock: zmq.Socket, name: str) -> None:
        """Forward this store's pushes to ``sock`` (the executor's PULL socket, bound here to an inproc
        address as well), so ``subscribe_and_get`` subscriptions deliver ``KeyUpdate`` frames there."""
        address = f"inproc://redis-pushes-{name}"
        sock.bind(address)
        self.pushes = PushBridge(self.url, self.channel_prefix, context, address, self._retry_budget_s)

    def subscribe_and_get(self, subscriber: str, address: str, keys: list[str]) -> list[Lattice | None]:
        """Subscribe to ``keys`` (confirmed by the server) and then read them: no write falls between."""
        if self.pushes is not None:
            try:
                self.pushes.subscribe(keys)
            except SubscribeTimeout as exc:
                raise StoreUnavailable(f"{exc}: check that it is running and reachable") from None
        return self.get_lattices(keys)

    def subscribe_and_read(self, subscriber: str, address: str,
                           keys: list[str]) -> tuple[list[Lattice | None], list[int]]:
        return self.subscribe_and_get(subscriber, address, keys), []

    def subscribe(self, subscriber: str, address: str, keys: list[str], unsubscribe: bool = False) -> None:
        if self.pushes is None:
            return
        if unsubscribe:
            self.pushes.unsubscribe(keys)
        else:
            self.pushes.subscribe(keys)

    def epoch_probe(self) -> PushEpochProbe:
        return PushEpochProbe(self)

    def wait_trigger_watched(self, name: str, created_ns: int) -> None:
        """Return once the trigger relay watches trigger ``name`` as of its record ``created_ns`` (the scheduler
        acknowledges `trigger add` only then, so a put right after it fires, as with the embedded store)."""
        deadline = time.monotonic() + TRIGGER_WATCH_TIMEOUT_S
        key = TRIGGER_WATCHED_PREFIX + name
        while True:
            (lattice,) = self.get_lattices([key])
            if getattr(lattice, "value", None) and serialization.decode(lattice.value) >= created_ns:
                return
            if time.monotonic() > deadline:
                raise CbctlError(f"the trigger relay did not start watching trigger {name!r} within "
                                 f"{TRIGGER_WATCH_TIMEOUT_S:.0f} s: see `cbctl logs triggers`")
            time.sleep(TRIGGER_WATCH_POLL_S)  # a poll with a deadline: the relay's write is in another process

    # --- status -------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The store row of `cbctl status` and `cbctl top`, from INFO of every master."""
        return self._retrying(self._stats)

    def _stats(self) -> dict[str, Any]:
        if self.cluster:
            nodes = self._redis.get_primaries()
            infos = [self._redis.info("all", target_nodes=node) for node in nodes]
            keys = sum(self._redis.dbsize(target_nodes=node) for node in nodes)
        else:
            infos = [self._redis.info("all")]
            keys = self._redis.dbsize()

        (relay,) = self._read([self.redis_key(TRIGGER_STATS_KEY)])
        triggers = serialization.decode(relay.value) if getattr(relay, "value", None) else {}

        def total(field: str) -> int:
            return sum(int(info.get(field, 0) or 0) for info in infos)

        def calls(*commands: str) -> int:
            return sum(int(info.get(f"cmdstat_{c}", {}).get("calls", 0)) for info in infos for c in commands)

        return {
            "backend": "redis-cluster" if self.cluster else "redis",
            "address": self.address,
            "redis_version": infos[0].get("redis_version", ""),
            "masters": len(infos),
            "keys": keys,  # every key of the database(s), tombstones included
            "bytes": total("used_memory"),
            "log_bytes": total("aof_current_size"),
            "snapshot_bytes": None,
            "uptime_s": min(int(info.get("uptime_in_seconds", 0)) for info in infos),
            "epoch": ",".join(str(info.get("run_id", "")) for info in infos),
            "gets": calls("mget", "get", "smembers"),
            "puts": calls("evalsha", "eval"),
            "deletes": None,  # a delete is a merge (a tombstone): counted in puts
            "lists": calls("scan"),
            "ops_per_s": total("instantaneous_ops_per_sec"),
            "subscriptions": total("pubsub_channels"),
            "aof_enabled": all(int(info.get("aof_enabled", 0)) for info in infos),
            "maxmemory_policy": infos[0].get("maxmemory_policy", ""),
            "protocol_errors": 0,
            "request_errors": 0,
            "triggers": 0, "triggered_calls": 0, "trigger_retries": 0, "trigger_errors": 0, "trigger_dropped": 0,
            "trigger_pending": 0, "trigger_stats": {},
            **triggers,  # the trigger relay's counters, as of its last write (at most a second old)
        }

    def close(self) -> None:
        if self.pushes is not None:
            self.pushes.close()
            self.pushes = None
        self._redis.close()


class PushEpochProbe:
    """The executor's store-epoch probe on Redis: the pub/sub reader's generation, which changes whenever pushes
    may have been missed (``StoreEpoch`` frames already tell the executor at once; this is the timer's check)."""

    def __init__(self, client: RedisStoreClient) -> None:
        self.client = client

    def probe(self, wait_s: float) -> str | None:
        pushes = self.client.pushes
        return None if pushes is None else f"pushes-{pushes.generation}"

    def close(self) -> None:
        pass
