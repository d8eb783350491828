"""The trigger relay: on a Redis store, the store role's only process (role ``triggers``), which fires storage
triggers.

With the embedded store, the store node sees every write and fires the triggers whose prefix matches. On Redis
no cbctl process is in the data path, so this one watches: it pattern-subscribes to the merge script's pushes
of the keys under every trigger prefix (and of the trigger records themselves), and hands each push to the same
``StoreTriggers`` / ``TriggerDispatcher`` the store node uses, which send the calls to the schedulers and
retry them until a result comes back (at least once, as documented in triggers.py).

What differs from the embedded store: pub/sub drops what is published while this process's connection is
down, so puts made while it reconnects (a Redis restart, or this process restarting) fire nothing, as a store
crash forgets the calls in flight today. A new trigger is acknowledged (``trigger add`` returns) only once the
relay has subscribed to its prefix: it writes ``__cb/trigger-watched/NAME`` and the scheduler waits for it.
A removed one stops firing for the puts published after its removal (pushes arrive in order). Its counters
reach ``store_stats()`` through the key ``__cb/trigger-stats`` (``TRIGGER_STATS_KEY``), written at most once a
second when they changed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgpack

from cbctl.runtime.defaults import (
    MAX_MESSAGE_BYTES,
    MAX_TRIGGER_DEPTH,
    TRIGGER_RELAY_POLL_S,
    TRIGGER_RELAY_STATS_S,
)
from cbctl.runtime.lattices import lattice_from_wire
from cbctl.runtime.process import ProcessConfig, ShutdownFlag, new_context, report_ready, setup_logging
from cbctl.runtime.redis_store.client import TRIGGER_STATS_KEY, TRIGGER_WATCHED_PREFIX, RedisStoreClient
from cbctl.runtime.store.triggers import StoreTriggers, TriggerDispatcher
from cbctl.runtime.trigger_records import PREFIX
from cbctl.runtime.wire import limits

log = logging.getLogger(__name__)

#: How long the relay waits for Redis to confirm a new pattern subscription.
CONFIRM_TIMEOUT_S = 5.0
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def minimal_prefixes(prefixes: set[str]) -> set[str]:
    """The prefixes no other one covers: one pattern per write, or a write would fire its triggers twice."""
    return {p for p in prefixes if not any(p != q and p.startswith(q) for q in prefixes)}


class TriggerFeed:
    """The relay's pub/sub connection: pattern subscriptions for the trigger records and each trigger prefix."""

    def __init__(self, store: RedisStoreClient) -> None:
        self.store = store
        self.pubsub = store.url.connect(socket_timeout=None).pubsub()
        self.patterns: set[str] = set()
        self.held: list[dict[str, Any]] = []  # pushes read while waiting for a subscription's confirmation
        self.lost = False  # the connection failed, and no poll has succeeded since
        self.reconnected = False  # a poll succeeded after a failure: trigger records may have changed meanwhile

    def pattern(self, prefix: str) -> str:
        return (self.store.channel_prefix + prefix).translate(_GLOB_SPECIAL) + "*"

    def follow(self, prefixes: set[str]) -> None:
        """Pattern-subscribe to exactly the trigger records and ``prefixes`` (minimal); returns once the server
        confirmed the new patterns, so a put published from then on is seen (pushes meanwhile are kept)."""
        wanted = {self.pattern(p) for p in minimal_prefixes(prefixes)} | {self.pattern(PREFIX)}
        new, gone = wanted - self.patterns, self.patterns - wanted
        if gone:
            self.pubsub.punsubscribe(*sorted(gone))
        if new:
            self.pubsub.psubscribe(*sorted(new))
            pending = {p.encode() for p in new}
            deadline = time.monotonic() + CONFIRM_TIMEOUT_S
            while pending and time.monotonic() < deadline:
                message = self.pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if message is None:
                    continue
                if message["type"] == "psubscribe":
                    pending.discard(message["channel"])
                else:
                    self.held.append(message)
            if pending:
                raise TimeoutError(f"Redis did not confirm the subscriptions {sorted(pending)}")
        self.patterns = wanted

    def poll(self, timeout_s: float) -> list[tuple[str, Any]]:
        """Pushes (key, lattice) that arrived within ``timeout_s``; [] on a connection failure (``lost``)."""
        out = []
        try:
            held, self.held = self.held, []
            message = held.pop(0) if held else self.pubsub.get_message(timeout=timeout_s)
            while message is not None:
                if message["type"] == "pmessage":
                    key = message["channel"][len(self.store.channel_prefix):].decode()
                    try:
                        out.append((key, lattice_from_wire(msgpack.unpackb(message["data"], raw=False))))
                    except ValueError as exc:
                        log.warning("dropped a malformed push for %r: %s", key, exc)
                message = held.pop(0) if held else self.pubsub.get_message(timeout=0)
            if self.lost:
                self.lost, self.reconnected = False, True
        except Exception as exc:  # redis-py reconnects (and subscribes again) on the next call
            if not self.lost:
                log.warning("pub/sub connection to Redis lost (%s): puts made until it is back fire nothing", exc)
            self.lost = True
            time.sleep(timeout_s)  # Redis is down: do not spin (the next poll tries to reconnect)
        return out

    def close(self) -> None:
        self.pubsub.close()


def load_index(store: RedisStoreClient, triggers: StoreTriggers) -> None:
    keys = store.list_keys(PREFIX)
    records = list(zip(keys, store.get_lattices(keys))) if keys else []
    triggers.index.clear()
    triggers.load(records)


def main(config: ProcessConfig) -> None:
    """Trigger relay entry point (started by the supervisor on a Redis store)."""
    setup_logging(config)
    shutdown = ShutdownFlag()
    context = new_context(config)
    store = RedisStoreClient(config.store_address, writer_id=config.name)
    # values=True buckets read the keys they gathered from Redis; the depth limit applies to what the relay
    # sees, which is depth 0 for every put (Redis pushes do not carry a put's trigger depth yet)
    triggers = StoreTriggers(lookup=lambda key: store.get_lattices([key])[0],
                             max_args_bytes=int(config.options.get(limits.OPTION, MAX_MESSAGE_BYTES)),
                             max_depth=int(config.options.get("max_trigger_depth", MAX_TRIGGER_DEPTH)))
    dispatcher = TriggerDispatcher(context, config, triggers)
    feed = TriggerFeed(store)
    try:
        feed.follow(set())  # subscribed before the index is read: a record written meanwhile is pushed
        load_index(store, triggers)
        feed.follow({record.prefix for record in triggers.index.values()})
    except Exception as exc:
        log.exception("the trigger relay could not start")
        report_ready(context, config, "", f"the trigger relay could not read Redis: {exc}")
        raise SystemExit(1) from None
    report_ready(context, config, triggers.response_address)
    watched: dict[str, int] = {}  # trigger name -> created_ns of the record acknowledged as watched
    last_stats: dict[str, Any] = {}
    next_stats = 0.0
    while not shutdown.requested:
        for key, lattice in feed.poll(TRIGGER_RELAY_POLL_S):
            triggers.on_write(key, lattice)
        try:
            if feed.reconnected:
                load_index(store, triggers)
                feed.reconnected = False
            feed.follow({record.prefix for record in triggers.index.values()})
            for name, record in triggers.index.items():
                if watched.get(name) != record.created_ns:  # subscribed: `trigger add` may return now
                    store.put(TRIGGER_WATCHED_PREFIX + name, record.created_ns)
                    watched[name] = record.created_ns
        except Exception as exc:  # Redis is down: the next turns try again
            log.debug("trigger index not refreshed yet: %s", exc)
        dispatcher.service()
        now = time.monotonic()
        if now >= next_stats:
            next_stats = now + TRIGGER_RELAY_STATS_S
            stats = triggers.stats()
            if stats != last_stats:
                try:
                    store.put(TRIGGER_STATS_KEY, stats)
                    last_stats = stats
                except Exception as exc:
                    log.warning("could not write the trigger counters: %s", exc)
    dispatcher.close()
    feed.close()
    store.close()
    context.term()
    log.info("trigger relay stopped")
