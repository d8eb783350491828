"""The store node: key -> lattice, every write a merge, every acknowledged write durable first.

One loop: drain the ROUTER socket, apply the batch to the backend (``backend.py``; the embedded one appends
the batch's writes to its write-ahead log in one call on ``commit``, before any of them is acknowledged),
reply, push merged values to subscribed caches, and give the backend its timer work (the batch fsync,
compaction). Subscriptions, triggers and counters are the node's; the data is the backend's, except ephemeral
values (``cb.put(..., durable=False)``), which live in the node's own table and are never logged
(``ephemeral.py``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import zmq

from cbctl.errors import CbctlError, InvalidArgument, ProtocolError
from cbctl.runtime import cluster, home_lock
from cbctl.runtime.defaults import (
    EPHEMERAL_MAX_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_TRIGGER_DEPTH,
    RATE_SAMPLE_S,
    RATE_WINDOW_S,
    RESERVED_PREFIX,
    STOP_LINGER_S,
)
from cbctl.runtime.lattices import Lattice, LWWLattice, lattice_from_wire
from cbctl.runtime.metrics import RateWindow
from cbctl.runtime.process import (
    PeerSockets,
    ProcessConfig,
    RejectedFrameLog,
    ShutdownFlag,
    TimerWork,
    drain,
    new_context,
    new_socket,
    report_ready,
)
from cbctl.runtime.store.backend import StoreBackend
from cbctl.runtime.store.embedded import EmbeddedBackend
from cbctl.runtime.store.ephemeral import EphemeralTable
from cbctl.runtime.store.triggers import StoreTriggers, TriggerDispatcher
from cbctl.runtime.trigger_records import PREFIX
from cbctl.runtime.wire import limits, shared
from cbctl.runtime.wire.frames import Frames
from cbctl.runtime.wire.messages import (
    Ack,
    DeleteRequest,
    EphemeralPut,
    ErrorResponse,
    GetRequest,
    GetResponse,
    KeyDropped,
    KeyUpdate,
    ListKeysRequest,
    ListKeysResponse,
    Message,
    PutRequest,
    StoreStatsRequest,
    StoreStatsResponse,
    SubscribeRequest,
    unpack,
    version_refusal,
)

log = logging.getLogger(__name__)
rejected = RejectedFrameLog(log)  # warnings about frames this process drops, rate-limited


class StoreNode:
    """The state and handlers of one store node, independent of how messages arrive (tests drive it)."""

    def __init__(self, backend: StoreBackend, ephemeral_max_bytes: int = EPHEMERAL_MAX_BYTES,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, max_trigger_depth: int = MAX_TRIGGER_DEPTH) -> None:
        self.backend = backend
        self.ephemeral = EphemeralTable(ephemeral_max_bytes)  # never logged, never in the backend
        self.subscribers: dict[str, set[str]] = {}  # in memory only: a restarted store has none
        self.subscriptions = 0  # sum of the sets' sizes, kept on every change so stats stay O(1)
        # Executors compare this with what they saw before (their once-per-status-interval stats probe): a new
        # epoch means the subscriptions their caches rely on are gone, so they drop their caches (cache.py).
        self.epoch = os.urandom(8).hex()
        # sees every write, durable or ephemeral: storage-triggered calls (see triggers.py)
        self.triggers = StoreTriggers(lookup=self.lookup, max_args_bytes=max_message_bytes,
                                      max_depth=max_trigger_depth)
        self.triggers.load(backend.scan(PREFIX))
        self.counters = {"gets": 0, "puts": 0, "deletes": 0, "lists": 0, "protocol_errors": 0,
                         "request_errors": 0,
                         # large values: bytes received and sent as frames of their own (kept as received, never
                         # parsed or copied), the largest msgpack frame parsed (a large value inline would show
                         # here), and messages refused for their frames' total size (``process.receive_rest``)
                         "frames_in_bytes": 0, "frames_out_bytes": 0, "largest_parsed_frame_bytes": 0,
                         "oversized_refused": 0, "large_values_dropped_from_caches": 0}
        self.started = time.time()
        self.rates = RateWindow(RATE_WINDOW_S, RATE_SAMPLE_S)  # ops/s for `cbctl top`, sampled in maintain()

    def live_keys(self, prefix: str = "") -> list[str]:
        keys = [key for key, _ in self.backend.scan(prefix)]
        if self.ephemeral.entries:
            keys.extend(key for key, _ in self.ephemeral.scan(prefix))
        return sorted(keys)

    def lookup(self, key: str) -> Lattice | None:
        """A key's value, ephemeral or durable (what a get answers)."""
        if self.ephemeral.entries:
            lattice = self.ephemeral.get(key)
            if lattice is not None:
                return lattice
        return self.backend.get(key)

    def handle_batch(self, requests: list[Message]) -> tuple[list[Message], list[tuple[str, Message]]]:
        """Apply a batch; return replies (in order) and subscription pushes. Writes are logged, as one
        append, before this returns, so the caller may acknowledge them."""
        replies: list[Message] = []
        changed: dict[str, Lattice] = {}
        dropped: list[tuple[str, Message]] = []
        for request in requests:
            try:
                replies.append(self._handle(request, changed, dropped))
            except Exception as exc:  # a malformed request must not take the store down
                self.counters["request_errors"] += 1
                rejected.warning("bad %s: %s", type(request).__name__, exc)
                error_type = type(exc).__name__ if isinstance(exc, CbctlError) else "InvalidArgument"
                replies.append(ErrorResponse(getattr(request, "req_id", 0), error_type, str(exc)))
        self.backend.commit()
        pushes: list[tuple[str, Message]] = []
        for key, lattice in changed.items():
            addresses = self.subscribers.get(key)
            if not addresses:
                continue
            if type(getattr(lattice, "value", None)) is Frames:
                # a large value is not pushed to every cache that held the key (most may never read it again):
                # they drop their copies and the subscriptions go, so only a reader fetches it, once
                del self.subscribers[key]
                self.subscriptions -= len(addresses)
                self.counters["large_values_dropped_from_caches"] += len(addresses)
                dropped.extend((address, KeyDropped(key)) for address in addresses)
                continue
            wire = lattice.to_wire()
            pushes.extend((address, KeyUpdate(key, wire)) for address in addresses)
        return replies, pushes + dropped if dropped else pushes

    def _handle(self, request: Message, changed: dict[str, Lattice], dropped: list[tuple[str, Message]]) -> Message:
        if isinstance(request, GetRequest):
            self.counters["gets"] += len(request.keys)
            if not self.ephemeral.entries:  # the common case costs one length check
                return GetResponse(request.req_id, [_wire_or_none(self.backend.get(k)) for k in request.keys])
            lattices, ephemeral = [], []
            for position, key in enumerate(request.keys):
                lattice = self.ephemeral.get(key)
                if lattice is None:
                    lattice = self.backend.get(key)
                else:
                    ephemeral.append(position)
                lattices.append(_wire_or_none(lattice))
            return GetResponse(request.req_id, lattices, ephemeral)
        if isinstance(request, PutRequest):
            self.counters["puts"] += 1
            lattice = lattice_from_wire(request.lattice)
            _check_key(request.key)
            if self.ephemeral.entries and request.key in self.ephemeral:
                raise InvalidArgument(f"key {request.key!r} holds an ephemeral value: a key is durable or "
                                      "ephemeral, not both; use another key, or delete it first")
            merged = changed[request.key] = self.backend.merge(request.key, lattice)
            self.triggers.on_write(request.key, merged, request.trigger_depth)
            return Ack(request.req_id, _superseded_by(lattice, merged))
        if isinstance(request, EphemeralPut):
            return self._put_ephemeral(request, dropped)
        if isinstance(request, DeleteRequest):
            self.counters["deletes"] += 1
            _check_key(request.key)
            if self.ephemeral.entries and self.ephemeral.delete(request.key):
                return Ack(request.req_id)  # never logged, so nothing to log now either
            tombstone = LWWLattice(request.timestamp, request.writer, None, tombstone=True)
            merged = changed[request.key] = self.backend.merge(request.key, tombstone)
            self.triggers.on_write(request.key, merged)
            return Ack(request.req_id, _superseded_by(tombstone, merged))
        if isinstance(request, ListKeysRequest):
            self.counters["lists"] += 1
            return ListKeysResponse(request.req_id, self.live_keys(request.prefix))
        if isinstance(request, SubscribeRequest):
            for key in request.keys:
                if self.ephemeral.entries and key in self.ephemeral and not request.unsubscribe:
                    continue  # caches never hold ephemeral values: nothing to push
                addresses = self.subscribers.get(key)
                if request.unsubscribe:
                    if addresses is not None and request.address in addresses:
                        addresses.discard(request.address)
                        self.subscriptions -= 1
                        if not addresses:  # no empty set left behind per key ever cached
                            del self.subscribers[key]
                elif addresses is None:
                    self.subscribers[key] = {request.address}
                    self.subscriptions += 1
                elif request.address not in addresses:
                    addresses.add(request.address)
                    self.subscriptions += 1
            return Ack(request.req_id)
        if isinstance(request, StoreStatsRequest):
            return StoreStatsResponse(request.req_id, self.stats())
        raise ValueError(f"the store does not serve {type(request).__name__}")

    def _put_ephemeral(self, request: EphemeralPut, dropped: list[tuple[str, Message]]) -> Message:
        self.counters["puts"] += 1
        key = request.key
        _check_key(key)
        if key.startswith(RESERVED_PREFIX):
            raise InvalidArgument(f"key {key!r} is reserved: ephemeral keys must not start with {RESERVED_PREFIX!r}")
        durable = self.backend.get(key)
        if durable is not None and not (isinstance(durable, LWWLattice) and durable.tombstone):
            raise InvalidArgument(f"key {key!r} holds a durable value: a key is durable or ephemeral, not both; "
                                  "use another key, or delete it first")
        merged = self.ephemeral.put(key, lattice_from_wire(request.lattice), request.ttl_s)
        addresses = self.subscribers.pop(key, None)
        if addresses:  # caches holding the key (its absence, say) drop it and read it from here from now on
            self.subscriptions -= len(addresses)
            frame = KeyDropped(key)
            dropped.extend((address, frame) for address in addresses)
        self.triggers.on_write(key, merged, request.trigger_depth)
        return Ack(request.req_id)

    def time_until_due(self) -> float | None:
        """Seconds until timer work is due: the backend's, or the next ephemeral value's expiry."""
        due = self.backend.time_until_due()
        if self.ephemeral.entries:
            expiry = self.ephemeral.time_until_due()
            if expiry is not None:
                due = expiry if due is None else min(due, expiry)
        return due

    def stats(self) -> dict[str, Any]:
        return {
            **self.backend.stats(),  # keys and bytes first, then what the backend adds
            **self.ephemeral.stats(),  # ephemeral_keys, ephemeral_bytes: not counted in keys and bytes
            "uptime_s": time.time() - self.started,
            "subscriptions": self.subscriptions,  # cached keys, over every executor
            "epoch": self.epoch,
            **self.counters,
            **self.triggers.stats(),
            "shared_memory": dict(shared.stats),  # values lent and mapped through shared memory (wire/shared.py)
            "ops_per_s": sum(rate for name, rate in self.rates.rates(time.monotonic(), self.counters).items()
                             if name in ("gets", "puts", "deletes", "lists")),
        }

    def maintain(self) -> None:
        """Timer work: the backend's (the batch fsync, compaction), and the ops/s sample."""
        self.rates.maybe_sample(time.monotonic(), self.counters)
        if self.ephemeral.entries:
            self.ephemeral.expire()
        self.backend.maintain()

    def close(self) -> None:
        self.backend.close()


def open_backend(config: ProcessConfig) -> StoreBackend:
    """The backend this store process keeps its data in (the embedded one: the only one so far)."""
    return EmbeddedBackend(cluster.data_dir(Path(config.home)), durability=config.options.get("durability", "batch"),
                           salvage=bool(config.options.get("salvage")))


def _check_key(key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"a key must be a non-empty string, got {key!r}")


def _superseded_by(written: Lattice, merged: Lattice) -> int:
    """The timestamp of the last-writer-wins version that beat ``written`` (0 if it won, or is no such write):
    the writer is told, and stamps its next write of the key after it (``writer_clock.py``)."""
    if type(written) is LWWLattice and merged != written and type(merged) is LWWLattice:
        return merged.timestamp
    return 0


def _wire_or_none(lattice: Lattice | None) -> list[Any] | None:
    return None if lattice is None else lattice.to_wire()


def main(config: ProcessConfig) -> None:
    """Store process entry point (started by the supervisor)."""
    from cbctl.runtime.process import setup_logging

    setup_logging(config)
    shutdown = ShutdownFlag()
    context = new_context(config)
    data_dir = cluster.data_dir(Path(config.home))
    try:
        # held until this process exits (the kernel drops it however it exits): two stores on one log would
        # interleave their appends and destroy data, so a second one (an orphan of a crashed cluster still
        # running, say) must not start here
        data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = home_lock.acquire(data_dir / home_lock.STORE_LOCK)
        os.set_inheritable(lock_fd, False)
    except home_lock.LockHeld as held:
        report_ready(context, config, "", f"the data directory {data_dir} is in use by another store (pid "
                                          f"{held.pid or '?'}): two stores on one log would destroy data; stop "
                                          "that process first")
        raise SystemExit(1) from None
    try:
        node = StoreNode(open_backend(config),
                         int(config.options.get("ephemeral_max_bytes", EPHEMERAL_MAX_BYTES)),
                         int(config.options.get(limits.OPTION, MAX_MESSAGE_BYTES)),
                         max_trigger_depth=int(config.options.get("max_trigger_depth", MAX_TRIGGER_DEPTH)))
    except Exception as exc:
        log.exception("store could not start")
        report_ready(context, config, "", f"store could not recover its data: {exc}")
        raise SystemExit(1) from None
    sock = new_socket(context, zmq.ROUTER)
    # a peer sending a frame past this loses its connection, instead of costing the store its memory
    sock.setsockopt(zmq.MAXMSGSIZE, limits.backstop_bytes(config.options.get(limits.OPTION, MAX_MESSAGE_BYTES)))
    address = config.bind(sock)
    local = shared.is_local_address(address)  # every reader is on this host: large values go as shared memory
    shared.hold_on_attach = True  # a value written through shared memory is kept there, and read without a copy
    peers = PeerSockets(context)
    dispatcher = TriggerDispatcher(context, config, node.triggers)
    report_ready(context, config, address)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(dispatcher.results, zmq.POLLIN)
    # node.maintain() stays unguarded: a store whose log cannot sync must stop, not go on acknowledging writes
    timers = TimerWork(log)
    while not shutdown.requested:
        due = node.time_until_due()
        timeout_ms = 100 if due is None else max(0, min(100, int(due * 1000)))
        if poller.poll(timeout_ms):
            _serve(node, sock, peers, drain(sock), local)
        else:  # idle: pooled shared memory no value was lent through for a while goes
            timers.run(shared.trim)
        timers.run(dispatcher.service)  # after the batch is logged: triggered calls, their results and retries
        node.maintain()
    # warm stop: requests that already arrived are served and answered; close() then syncs the log
    _serve(node, sock, peers, drain(sock), local)
    dispatcher.close()
    node.close()
    sock.setsockopt(zmq.LINGER, int(STOP_LINGER_S * 1000))
    sock.close()
    peers.close(linger_s=STOP_LINGER_S)
    context.term()
    shared.close_pool()  # what this process lent and is taken stays mapped where it was taken
    log.info("store stopped")


def _serve(node: StoreNode, sock: zmq.Socket, peers: PeerSockets, frames: list[list[Any]],
           local: bool = False) -> None:
    identities: list[bytes] = []
    requests: list[Message] = []
    counters = node.counters
    for parts in frames:
        message = parts[-1]
        # the largest msgpack frame parsed: a large value that travels as frames of its own never counts here
        header_bytes = len(message) if type(message) is bytes else len(message[0]) if type(message) is list else 0
        if header_bytes > counters["largest_parsed_frame_bytes"]:
            counters["largest_parsed_frame_bytes"] = header_bytes
        try:
            request = unpack(message)
            if type(message) is list:
                gone = next((part for part in message if type(part) is shared.Gone), None)
                if gone is not None:  # a value whose shared memory could not be mapped: never kept, never logged
                    sock.send_multipart([*parts[:-1], ErrorResponse(getattr(request, "req_id", 0), "DecodeError",
                                                                    gone.reason).pack()])
                    continue
                counters["frames_in_bytes"] += sum(shared.part_nbytes(part) for part in message[1:])
            requests.append(request)
            identities.append(parts[0])
        except ProtocolError as exc:
            counters["protocol_errors"] += 1
            rejected.warning("dropped a bad frame: %s", exc)
            refusal = (_too_large(node, message) if type(message) is limits.Oversized
                       else version_refusal(message, "the store"))  # a peer of another version is told why
            if refusal is not None:
                sock.send_multipart([*parts[:-1], refusal])
    replies, pushes = node.handle_batch(requests)
    for identity, reply in zip(identities, replies):
        packed = reply.pack()
        if type(packed) is bytes:
            sock.send_multipart([identity, packed])
        else:  # a large value's frames, sent as the store keeps them: received frames, or its log's buffers
            counters["frames_out_bytes"] += sum(len(part) for part in packed[1:])
            packed = shared.outgoing(packed, local)
            sock.send_multipart([identity, *packed], copy=False)
    for address, push in pushes:
        peers.send(address, push.pack())


def _too_large(node: StoreNode, message: limits.Oversized) -> bytes | None:
    """The answer to a request whose frames together were over the bound (``process.receive_rest``): a
    ``MessageTooLarge`` error for its request id, read from its header (None when the header has none)."""
    node.counters["oversized_refused"] += 1
    data = message.header_data()
    req_id = data[2] if data is not None and len(data) > 2 else None
    if type(req_id) is not int:
        return None
    return ErrorResponse(req_id, "MessageTooLarge", message.text).pack()
