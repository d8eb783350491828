"""The executor's side of the consistency modes (``consistency.py`` describes them): ``SessionManager`` serves
every ``cb.get``/``cb.put`` of the step now running under its call's mode, keeps the repeatable-read snapshots
of calls still running, and answers other executors' version requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from cbctl.errors import CbctlError, ConsistencyError
from cbctl.runtime.consistency import (
    CAUSAL,
    HOLDERS,
    LWW,
    REPEATABLE_READ,
    SESSION,
    WRITES,
    CallSession,
    CausalCounter,
    SnapshotTable,
    causal_version,
    covers,
    merge_extras,
    reveal,
    version_of,
    write_token,
)
from cbctl.runtime.defaults import SNAPSHOT_TTL_S
from cbctl.runtime.executor.cache import CachedStore
from cbctl.runtime.lattices import CausalLattice, Lattice, LWWLattice, VectorClock
from cbctl.runtime.wire import serialization
from cbctl.runtime.wire.frames import Frames
from cbctl.runtime.wire.messages import DagTrigger, SnapshotRelease, VersionRequest, VersionResponse

log = logging.getLogger(__name__)

#: ``fetch_remote(holder address, call id, key) -> (found, lattice)``: one version from another executor.
FetchRemote = Callable[[str, str, str], tuple[bool, "Lattice | None"]]


class SessionManager:
    """The executor's reads and writes under the call's mode. ``begin`` is called before every step runs;
    everything else happens only when the step reads or writes, so a step that touches no state pays for
    nothing but ``begin`` and two attribute checks."""

    def __init__(self, store: CachedStore, address: str, writer_id: str, fetch_remote: FetchRemote,
                 send: Callable[[str, bytes], Any], snapshot_ttl_s: float = SNAPSHOT_TTL_S) -> None:
        self.store = store
        self.address = address
        self.writer_id = writer_id
        self.fetch_remote = fetch_remote
        self.send = send
        self.snapshots = SnapshotTable(snapshot_ttl_s)
        self.counter = CausalCounter()
        self.trigger: DagTrigger | None = None
        self.session: CallSession | None = None
        self._releases: dict[str, list[str]] = {}
        self.counters = {"snapshot_reads": 0, "version_fetches": 0, "versions_served": 0}

    # --- step lifetime ---------------------------------------------------------------------------------

    def begin(self, trigger: DagTrigger, inputs: list[DagTrigger]) -> None:
        """A step of ``trigger``'s call is about to run with these upstream triggers."""
        self.trigger = trigger
        self.session = None
        if len(inputs) > 1 and any(t.extras for t in inputs):
            trigger.extras = merge_extras(t.extras for t in inputs if t.extras)

    def outgoing_extras(self, trigger: DagTrigger) -> dict[str, Any]:
        """The extras ``trigger``'s successors receive."""
        session = self.session
        if session is None or self.trigger is not trigger:
            return trigger.extras
        return session.outgoing()

    def result_extras(self, trigger: DagTrigger) -> dict[str, Any]:
        """The call ends at this step: release its snapshots; return what the caller's result carries."""
        session = self.session
        if session is not None and self.trigger is trigger:
            holders, writes = session.holders, session.writes
        elif trigger.extras:
            holders, writes = trigger.extras.get(HOLDERS), trigger.extras.get(WRITES)
        else:
            return {}
        if holders:
            for holder in holders:
                if holder == self.address:
                    self.snapshots.release((trigger.call_id,))
                else:
                    self._releases.setdefault(holder, []).append(trigger.call_id)
        return {WRITES: writes} if writes else {}

    def _open(self) -> CallSession:
        trigger = self.trigger
        if trigger is None:
            raise CbctlError("cb.get and cb.put work only while a function runs")
        self.session = CallSession(trigger.call_id, trigger.consistency, trigger.extras)
        return self.session

    # --- reads and writes -------------------------------------------------------------------------------

    def read(self, key: str) -> Any:
        """``cb.get``: the key's value as the call's mode allows it to be seen."""
        session = self.session
        if session is None:
            trigger = self.trigger
            extras = trigger.extras if trigger is not None else None
            if trigger is not None and trigger.consistency == LWW and not (extras and SESSION in extras):
                # the common case: nothing to check or record; a value the cache holds decodes into copies, one
                # it does not hold (too large, ephemeral) is this reader's alone (cache.held)
                return reveal(key, self.store.read(key), LWW, owned=True)
            session = self._open()
        mode = session.mode
        if mode == REPEATABLE_READ:
            lattice = self._read_repeatable(session, key)
        elif mode == CAUSAL:
            lattice = self._read_causal(session, key)
        else:
            lattice = self.store.read(key, session.freshness(key))
        # repeatable-read snapshots keep what they read (peers ask for it): their arrays are copies
        return reveal(key, lattice, mode, owned=mode == LWW)

    def write(self, key: str, encoded: bytes | Frames) -> bool:
        """``cb.put``: write through (acknowledged by the store when this returns) and record the write; returns
        whether it won (see ``StoreClient.put_lww``)."""
        session = self.session or self._open()
        if session.mode != LWW and type(encoded) is not bytes:
            # causal values and repeatable-read snapshots are kept by this process past the call, so not as views
            # of the function's own arrays: inline, one bytes (a large value in parts is for LWW writes)
            encoded = serialization.inline(encoded)
        if session.mode == CAUSAL:
            self._follow_client_write(session, key)
            lattice: Lattice = causal_version(session.floor, key, encoded, self.writer_id, self.counter)
        else:
            lattice = LWWLattice(self.store.client.clock.stamp(key), self.writer_id, encoded)
        lattice, merged, won = self.store.write(key, lattice)
        session.record_write(key, write_token(lattice))
        if session.mode == CAUSAL:
            session.raise_floor(key, lattice.clock)
        elif session.mode == REPEATABLE_READ:
            session.record_version(key, merged, self.address)
            self.snapshots.keep(session.call_id, key, merged, time.monotonic())
        return won

    def _follow_client_write(self, session: CallSession, key: str) -> None:
        """Causal: before writing ``key``, raise the call's floor to the client's own earlier write of it (so
        this write replaces that one) and to that write's dependencies (so whoever reads this one respects
        them too). The dependencies come from the version that holds the client's write: those of all its
        concurrent versions, a superset, which only makes later readers more careful."""
        token = session.client_tokens.get(key) if session.client_tokens else None
        if not isinstance(token, dict):
            return
        clock = VectorClock(token)
        floor = session.floor.get(key)
        if floor is not None and floor.dominates(clock):
            return
        current = self.store.read(key, lambda lattice: covers(lattice, clock))
        if type(current) is CausalLattice and covers(current, clock):
            session.raise_floor(key, clock)
            for dep, dep_clock in current.dependencies.items():
                session.raise_floor(dep, dep_clock)

    def _read_repeatable(self, session: CallSession, key: str) -> Lattice | None:
        if key in session.seen:
            return session.seen[key]
        recorded = session.versions.get(key)
        if recorded is None:  # the call's first reader of key: what it sees is the call's version
            lattice = self.store.read(key, session.freshness(key))
            session.record_version(key, lattice, self.address)
            self.snapshots.keep(session.call_id, key, lattice, time.monotonic())
            return lattice
        version, holder = recorded
        lattice = self._find_version(session.call_id, key, version, holder)
        session.seen[key] = lattice
        return lattice

    def _find_version(self, call_id: str, key: str, version: list[Any] | None, holder: str) -> Lattice | None:
        if version is None:
            return None  # the first reader found no value, so neither does this one
        entry = self.store.cache.get(key)
        if entry is not None and version_of(entry.lattice) == version:
            self.store.hits += 1
            return entry.lattice
        found, lattice = self.snapshots.find(call_id, key)
        if found:
            self.counters["snapshot_reads"] += 1
            return lattice
        if entry is None:  # not cached here: the store may well still hold that version
            lattice = self.store.fetch(key)
            if version_of(lattice) == version:
                return lattice
        if holder != self.address:
            self.counters["version_fetches"] += 1
            found, lattice = self.fetch_remote(holder, call_id, key)
            if found:
                return lattice
        raise ConsistencyError(
            f"repeatable read: the version of {key!r} this call first read is no longer held (its snapshot "
            f"at {holder} was released, expired or lost with a restart): call again")

    def _read_causal(self, session: CallSession, key: str) -> Lattice | None:
        fresh = session.freshness(key)
        hits = self.store.hits
        lattice = self.store.read(key, fresh)
        if fresh is not None and self.store.hits == hits and not fresh(lattice):  # a hit passed the check
            # the store has every acknowledged write, so this means the key was deleted or changed kind
            raise ConsistencyError(f"causal: the store holds no version of {key!r} as recent as one this call "
                                   "already depends on (was the key deleted?)")
        session.observe(key, lattice)
        return lattice

    # --- other executors -------------------------------------------------------------------------------

    def serve_version(self, request: VersionRequest) -> None:
        """Answer another executor's ``VersionRequest`` from the snapshot table."""
        found, lattice = self.snapshots.find(request.call_id, request.key)
        self.counters["versions_served"] += 1
        wire = lattice.to_wire() if found and lattice is not None else None
        self.send(request.reply_to, VersionResponse(request.req_id, found, wire).pack())

    def release(self, message: SnapshotRelease) -> None:
        self.snapshots.release(message.call_ids)

    def maintain(self, now: float) -> None:
        """Timer work: send batched snapshot releases, expire forgotten snapshots, unsubscribe evictions."""
        releases, self._releases = self._releases, {}
        for holder, call_ids in releases.items():
            self.send(holder, SnapshotRelease(call_ids).pack())
        dropped = self.snapshots.expire(now)
        if dropped:
            log.info("dropped %d repeatable-read snapshots whose calls never released them", dropped)
        try:
            self.store.flush()
        except CbctlError as exc:  # the store is restarting: evicted keys stay queued for the next flush
            log.warning("could not unsubscribe evicted keys: %s", exc)

    def metrics(self) -> dict[str, Any]:
        return {**self.store.metrics(), **self.counters, "snapshots": len(self.snapshots),
                "snapshots_expired": self.snapshots.expired}
