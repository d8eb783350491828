"""Redis pub/sub -> an executor's PULL socket: the pushes that keep its cache fresh on a Redis store.

The merge script publishes every changed value on the key's channel. One thread per executor reads a pub/sub
connection of its own (RESP2, so messages are plain arrays) and forwards each message as the ``KeyUpdate``
frame the embedded store would have sent, to the executor's own PULL socket (an inproc address it also binds):
the executor's loop and cache see no difference.

- ``subscribe`` (the executor's thread, on a cache miss) sends SUBSCRIBE and returns only once the server
  confirmed it, so the read that follows cannot miss a write: today's subscribe-then-fetch.
- Pub/sub is fire-and-forget: whatever is published while the connection is down is lost. So when the
  connection drops (a Redis restart, a network cut, an output buffer overflow at the server), the thread bumps
  ``generation`` and sends a ``StoreEpoch`` frame at once; the executor drops its whole cache on it, and every
  key is fetched (and subscribed) again on its next read. The thread reconnects with backoff and subscribes
  again to every channel still held.
- On a Redis Cluster, plain PUBLISH reaches every node, so one connection to any node sees every key's pushes;
  when that node goes, the thread moves to the next one (a new generation, as above).

Locking: ``_cond`` guards the connection's sends, ``channels`` and ``confirmed``; only the thread reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import msgpack
import zmq

from cbctl.runtime.defaults import REDIS_PUSH_POLL_S, REDIS_RECONNECT_FIRST_S, REDIS_RECONNECT_MAX_S
from cbctl.runtime.redis_store.url import StoreURL
from cbctl.runtime.wire.messages import KeyUpdate, StoreEpoch

log = logging.getLogger(__name__)

#: Channels per SUBSCRIBE when subscribing again after a reconnect.
RESUBSCRIBE_BATCH = 1000


class SubscribeTimeout(Exception):
    """The server did not confirm a subscription in time (it is down or unreachable)."""


class PushBridge:
    def __init__(self, url: StoreURL, channel_prefix: str, context: zmq.Context, push_address: str,
                 timeout_s: float) -> None:
        self.url = url
        self.prefix = channel_prefix.encode()
        self.timeout_s = timeout_s
        self._push = context.socket(zmq.PUSH)  # used by the reader thread only
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.setsockopt(zmq.SNDTIMEO, int(REDIS_PUSH_POLL_S * 1000))
        self._push.connect(push_address)
        self._cond = threading.Condition()
        self.channels: set[bytes] = set()
        self.confirmed: set[bytes] = set()
        self._conn = None
        self._next_host = 0
        self.generation = 0
        self.forwarded = 0
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-pushes", daemon=True)
        self._thread.start()

    # --- the executor's thread ----------------------------------------------------------------------

    def subscribe(self, keys: Iterable[str]) -> None:
        channels = [self.prefix + key.encode() for key in keys]
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            new = [c for c in channels if c not in self.channels]
            self.channels.update(new)
            if new:
                self._send("SUBSCRIBE", *new)
            while not all(c in self.confirmed for c in channels):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SubscribeTimeout(f"Redis at {self.url.redacted()} did not confirm a subscription within "
                                           f"{self.timeout_s:.0f} s")
                self._cond.wait(remaining)

    def unsubscribe(self, keys: Iterable[str]) -> None:
        channels = [self.prefix + key.encode() for key in keys]
        with self._cond:
            gone = [c for c in channels if c in self.channels]
            self.channels.difference_update(gone)
            self.confirmed.difference_update(gone)
            if gone:
                self._send("UNSUBSCRIBE", *gone)

    def close(self) -> None:
        self.closed.set()
        self._thread.join(timeout=5)
        with self._cond:
            if self._conn is not None:
                self._conn.disconnect()
                self._conn = None
        self._push.close()

    def _send(self, *command: bytes | str) -> None:
        """Send on the pub/sub connection (``_cond`` held); a failure is left to the reader, which notices the
        dead connection, reconnects and subscribes to every channel again."""
        if self._conn is None:
            return
        try:
            self._conn.send_command(*command)
        except Exception as exc:  # redis.ConnectionError, OSError: the reader's read fails too
            log.debug("pub/sub send failed (the reader reconnects): %s", exc)

    # --- the reader thread --------------------------------------------------------------------------

    def _run(self) -> None:
        delay = REDIS_RECONNECT_FIRST_S
        while not self.closed.is_set():
            if self._conn is None:
                try:
                    self._connect()
                    delay = REDIS_RECONNECT_FIRST_S
                except Exception as exc:
                    log.debug("pub/sub connect failed: %s", exc)
                    self.closed.wait(delay)
                    delay = min(delay * 2, REDIS_RECONNECT_MAX_S)
                continue
            try:
                if not self._conn.can_read(timeout=REDIS_PUSH_POLL_S):
                    continue
                reply = self._conn.read_response()
            except Exception as exc:  # the connection is gone: anything published meanwhile is lost
                self._lost(exc)
                continue
            self._on_reply(reply)

    def _connect(self) -> None:
        import redis

        host, port = self.url.hosts[self._next_host % len(self.url.hosts)]
        self._next_host += 1  # the next attempt tries the next node (a cluster's)
        cls = redis.SSLConnection if self.url.tls else redis.Connection
        conn = cls(host=host, port=port, username=self.url.username, password=self.url.password, protocol=2,
                   socket_timeout=self.timeout_s, socket_connect_timeout=min(self.timeout_s, 2.0))
        conn.connect()
        with self._cond:
            self._conn = conn
            held = sorted(self.channels)
            for i in range(0, len(held), RESUBSCRIBE_BATCH):
                self._send("SUBSCRIBE", *held[i:i + RESUBSCRIBE_BATCH])
        log.info("pub/sub connected to %s:%d (%d channels)", host, port, len(held))

    def _lost(self, exc: Exception) -> None:
        with self._cond:
            if self._conn is not None:
                self._conn.disconnect()
            self._conn = None
            self.confirmed.clear()
            self.generation += 1
            self._cond.notify_all()
        log.warning("pub/sub connection to Redis lost (%s): the cache is dropped (generation %d)", exc,
                    self.generation)
        self._forward(StoreEpoch(f"pushes-{self.generation}").pack())

    def _on_reply(self, reply: object) -> None:
        if not isinstance(reply, list) or len(reply) != 3:
            return
        kind, channel, data = reply
        if kind == b"message":
            if channel not in self.channels:
                return  # unsubscribed meanwhile
            try:
                wire = msgpack.unpackb(data, raw=False)
            except ValueError as exc:
                log.warning("dropped a malformed push on %r: %s", channel, exc)
                return
            self.forwarded += 1
            self._forward(KeyUpdate(channel[len(self.prefix):].decode(), wire).pack())
        elif kind == b"subscribe":
            with self._cond:
                if channel in self.channels:
                    self.confirmed.add(channel)
                    self._cond.notify_all()

    def _forward(self, frame: bytes) -> None:
        # blocks while the executor's queue is full (its loop is behind): Redis then buffers, and past its
        # client-output-buffer-limit it drops this connection, which drops the cache as above
        while not self.closed.is_set():
            try:
                self._push.send(frame)
                return
            except zmq.Again:
                continue
