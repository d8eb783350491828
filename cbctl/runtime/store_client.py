"""A small synchronous client of the store node, used by executors, schedulers and the client library.

Writes are lattice merges, so a request that timed out is simply sent again (on a fresh socket, so a
late reply to the old one cannot be mistaken for the new one) until a retry budget runs out; this is
also what carries clients across a store restart by the supervisor. Not thread-safe: one per thread,
or guarded by the owner.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import zmq

from cbctl.errors import CbctlError, NoSuchKey, StoreUnavailable, error_from_wire
from cbctl.runtime.defaults import STORE_REQUEST_TIMEOUT_S, STORE_RETRY_BUDGET_S
from cbctl.runtime.lattices import Lattice, LWWLattice, lattice_from_wire
from cbctl.runtime.process import new_socket, receive_message, send_message
from cbctl.runtime.wire import auth, serialization, shared
from cbctl.runtime.wire.frames import Frames
from cbctl.runtime.wire.messages import (
    Ack,
    DeleteRequest,
    EphemeralPut,
    ErrorResponse,
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    Message,
    PutRequest,
    StoreStatsRequest,
    StoreStatsResponse,
    SubscribeRequest,
    unpack,
)
from cbctl.runtime.writer_clock import WriterClock


class StoreAccess:
    """The value-level (last-writer-wins) methods every store client shares, over its lattice-level
    ``get_lattices`` / ``put_lattice``: the embedded store's ``StoreClient`` and Redis's ``RedisStoreClient``.
    Timestamps come from the writer's clock (``writer_clock.py``): never at or below one it has seen for the key."""

    writer_id: str
    clock: WriterClock
    #: Whether values at least ``OUT_OF_BAND_BYTES`` large travel and are kept in parts, as frames of their own
    #: (``serialization.encode``'s ``Frames``), instead of inline in one ``bytes``: the embedded store's node
    #: does; Redis keeps one string per value, so its client sends them inline.
    keeps_frames = False

    def get_lattices(self, keys: list[str]) -> list[Lattice | None]:
        raise NotImplementedError

    def put_lattice(self, key: str, lattice: Lattice) -> int:
        """Merge ``lattice`` into ``key``; the stamp of a later version that beat it (0: it won, or the store
        cannot tell)."""
        raise NotImplementedError

    def put_lww(self, key: str, lattice: LWWLattice) -> tuple[LWWLattice, bool]:
        """Write a last-writer-wins version stamped by ``self.clock``. If the key holds one stamped later (by a
        clock ahead of ours), stamp after it and write again, once: a put is never lost to an older one from a
        skewed clock. Returns the version written last and whether it won (False: a concurrent write stamped
        later still, which the caller reports)."""
        superseded = self.put_lattice(key, lattice)
        if superseded:
            self.clock.observe(key, superseded)
            lattice = LWWLattice(self.clock.stamp(key), lattice.writer, lattice.value, lattice.tombstone)
            superseded = self.put_lattice(key, lattice)
            if superseded:
                self.clock.observe(key, superseded)
        return lattice, not superseded

    def get(self, key: str) -> Any:
        """The value under ``key``; ``NoSuchKey`` if it was never written or was deleted."""
        return serialization.decode(self.get_encoded(key))

    def get_encoded(self, key: str) -> bytes | Frames:
        (lattice,) = self.get_lattices([key])
        return reveal_encoded(key, lattice)

    def put(self, key: str, value: Any) -> bool:
        """Write ``value`` under ``key`` (last-writer-wins); whether it is now the key's value."""
        return self.put_lww(key, self.new_lww(serialization.encode(value, out_of_band=self.keeps_frames), key))[1]

    def new_lww(self, encoded: bytes | Frames, key: str = "") -> LWWLattice:
        """A version of this writer, stamped after any it has seen for ``key`` (``writer_clock.py``)."""
        return LWWLattice(self.clock.stamp(key), self.writer_id, encoded)


class StoreClient(StoreAccess):
    keeps_frames = True  # a large value's frames go to the node and come back as they are (``wire/frames.py``)

    def __init__(self, context: zmq.Context, address: str, writer_id: str,
                 request_timeout_s: float = STORE_REQUEST_TIMEOUT_S,
                 retry_budget_s: float = STORE_RETRY_BUDGET_S) -> None:
        self._context = context
        self.address = address
        self.writer_id = writer_id
        self._request_timeout_ms = int(request_timeout_s * 1000)
        self._retry_budget_s = retry_budget_s
        self._ids = itertools.count(1)
        self._sock: zmq.Socket | None = None
        self._local = shared.is_local_address(address)  # large values go through shared memory (wire/shared.py)
        self.requests = 0  # how many round trips this client made (tests count cache hits with it)
        self.clock = WriterClock()  # this writer's last-writer-wins timestamps
        #: set by an executor for the step it runs: which call of a chain of storage-triggered calls makes the puts
        self.trigger_depth = 0

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            self._sock = new_socket(self._context, zmq.DEALER)
            auth.connect(self._sock, self.address)
        return self._sock

    def _request(self, build: Callable[[int], Message], before: Callable[[int], Message] | None = None) -> Message:
        """One round trip; ``before``, if given, is sent first on the same socket and its reply ignored (the
        store applies one client's requests in order, so it takes effect before ``build``'s)."""
        deadline = time.monotonic() + self._retry_budget_s
        self.requests += 1
        while True:
            req_id = next(self._ids)
            sock = self._socket()
            if before is not None:
                sock.send(before(next(self._ids)).pack())
            # a large value's buffers are sent from their memory, or through shared memory to a store of this host
            # (a segment per attempt: the store unlinks the one it receives); the reply comes once the node has them
            packed = build(req_id).pack()
            if type(packed) is list:
                packed = shared.outgoing(packed, self._local)
            send_message(sock, packed)
            remaining_ms = self._request_timeout_ms
            while remaining_ms > 0:
                started = time.monotonic()
                if not sock.poll(remaining_ms):
                    break
                reply = unpack(receive_message(sock))
                if getattr(reply, "req_id", None) == req_id:
                    if isinstance(reply, ErrorResponse):
                        raise error_from_wire(reply.error_type, reply.message)
                    return reply
                remaining_ms -= int((time.monotonic() - started) * 1000) + 1
            self._sock.close()  # a late reply on this socket would be for a request we gave up on
            self._sock = None
            if time.monotonic() >= deadline:
                raise StoreUnavailable(
                    f"the store at {self.address} did not answer for {self._retry_budget_s:.0f} s: "
                    "check `cbctl status` and `cbctl logs store`"
                )

    # --- lattice level ---------------------------------------------------------------------------------

    def get_lattices(self, keys: list[str]) -> list[Lattice | None]:
        return self.read(keys)[0]

    def read(self, keys: list[str]) -> tuple[list[Lattice | None], list[int]]:
        """The keys' lattices, and the positions of those that hold ephemeral values."""
        reply = self._request(lambda r: GetRequest(r, keys))
        assert isinstance(reply, GetResponse)
        return [None if wire is None else lattice_from_wire(wire) for wire in reply.lattices], reply.ephemeral

    def put_lattice(self, key: str, lattice: Lattice) -> int:
        """Merge ``lattice`` into ``key``; returns 0, or for a last-writer-wins version that lost the merge the
        timestamp of the one that won."""
        wire = lattice.to_wire()
        depth = self.trigger_depth
        reply = self._request(lambda r: PutRequest(r, key, wire, depth))
        assert isinstance(reply, Ack)
        return reply.superseded_by

    def put_ephemeral(self, key: str, lattice: LWWLattice, ttl_s: float = 0.0) -> None:
        """Merge ``lattice`` into ``key``'s ephemeral value in the store's memory (never logged), to live
        ``ttl_s`` seconds (0: the store's default)."""
        wire = lattice.to_wire()
        depth = self.trigger_depth
        reply = self._request(lambda r: EphemeralPut(r, key, wire, float(ttl_s), depth))
        assert isinstance(reply, Ack)

    def delete(self, key: str) -> bool:
        """Delete ``key`` (a tombstone, ordered like a write); whether the delete won, as for ``put``."""
        for _ in range(2):  # as put_lww: a version stamped ahead of our clock is seen, then outstamped once
            stamp = self.clock.stamp(key)
            reply = self._request(lambda r, stamp=stamp: DeleteRequest(r, key, stamp, self.writer_id))
            assert isinstance(reply, Ack)
            if not reply.superseded_by:
                return True
            self.clock.observe(key, reply.superseded_by)
        return False

    def list_keys(self, prefix: str = "") -> list[str]:
        reply = self._request(lambda r: ListKeysRequest(r, prefix))
        assert isinstance(reply, ListKeysResponse)
        return reply.keys

    def subscribe_and_get(self, subscriber: str, address: str, keys: list[str]) -> list[Lattice | None]:
        """Subscribe ``address`` to ``keys`` and read them, in one round trip (an executor cache's miss): the
        subscription is applied first, so every write the read does not include is pushed."""
        return self.subscribe_and_read(subscriber, address, keys)[0]

    def subscribe_and_read(self, subscriber: str, address: str,
                           keys: list[str]) -> tuple[list[Lattice | None], list[int]]:
        """``subscribe_and_get``, and the positions of the keys that hold ephemeral values (which the store
        does not subscribe anyone to: a cache must not hold them)."""
        reply = self._request(lambda r: GetRequest(r, keys),
                              before=lambda r: SubscribeRequest(r, subscriber, address, keys))
        assert isinstance(reply, GetResponse)
        return [None if wire is None else lattice_from_wire(wire) for wire in reply.lattices], reply.ephemeral

    def subscribe(self, subscriber: str, address: str, keys: list[str], unsubscribe: bool = False) -> None:
        self._request(lambda r: SubscribeRequest(r, subscriber, address, keys, unsubscribe))

    def stats(self) -> dict[str, Any]:
        reply = self._request(lambda r: StoreStatsRequest(r))
        assert isinstance(reply, StoreStatsResponse)
        return reply.stats

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def reveal_encoded(key: str, lattice: Lattice | None) -> bytes | Frames:
    """The encoded value an LWW lattice holds; ``NoSuchKey`` for none or a tombstone."""
    if lattice is None or (isinstance(lattice, LWWLattice) and lattice.tombstone):
        raise NoSuchKey(f"no value is stored under {key!r} (never written, deleted, or ephemeral and gone: "
                        "its ttl passed or the store restarted): write one with put first")
    if not isinstance(lattice, LWWLattice):
        raise CbctlError(f"key {key!r} holds a {lattice.kind} lattice, not a last-writer-wins value")
    return lattice.value
