"""Cloudburst's consistency modes, per DAG call, and read-your-writes across one client's calls.

The executor asks ``SessionManager`` (``executor/sessions.py``) for every ``cb.get``/``cb.put`` (and ``Ref``
argument); it keeps the state of the step now running (a ``CallSession``, built on the step's first read or
write from what the triggers carried), the repeatable-read snapshots of calls still running, and the
executor's ``CachedStore``. This module holds what the client, the scheduler and the executor share: the
modes, the extras keys, tokens and versions, the per-step state, and the client's session.

Modes (``client.call(..., consistency=...)``; the scheduler validates the name):

- ``lww``: reads are served by the cache (kept fresh by the store's pushes), writes are last-writer-wins.
- ``repeatable_read``: every function of a call that reads a key sees the version the call's first reader saw.
  The first reader records ``[version id, its executor's address]`` in the call's extras, which travel with the
  triggers, and keeps the version in a snapshot under the call id. A later reader serves the version from its
  cache when the cache still holds exactly that version, else from its own snapshot table, else (key not
  cached) from the store when the store still holds it, else fetches it from the first reader's executor
  (``VersionRequest``/``VersionResponse``). A write records the written version the same way.
  *Call ended*: the step that answers the caller (the sink, or a step that failed the call) releases the call's
  snapshots: its own at once, others' with one ``SnapshotRelease`` per holder, batched and sent on the
  executor's timer (within ``STATUS_INTERVAL_S``). Snapshots a release never reaches (a parallel branch of a
  failed call, an executor that died) expire after ``SNAPSHOT_TTL_S``. Parallel branches that both read a key
  first may see different versions (neither knows of the other); a step joining them keeps the version of
  its first upstream in edge order.
- ``causal``: values are ``CausalLattice``s. A write's clock is the clock the call has seen for the key, with
  this executor's own entry raised (so it dominates everything the call read of the key), and its
  dependencies are every other key version the call has seen. The call carries, per key, the least clock a
  later read may return (what it read or wrote, and the dependencies of what it read); a cached version below
  it is refetched from the store, which holds every acknowledged write. So a read never returns a version
  older than one causally before something the call already saw (a reply read first brings its message
  with it). Concurrent writes are both kept: under ``causal``, ``cb.get`` returns the *list* of concurrent
  values (one element when there is no conflict; a last-writer-wins value reads as a one-element list). To
  resolve a conflict, read the key and ``put`` the resolved value: the write's clock covers every version
  read, so it replaces them all. Two writes from one executor are ordered by that executor (its clock entry
  only grows), as in Cloudburst, where each executor cache is a node of the vector clocks. A client's calls
  follow each other: a causal write of a key that the client's earlier calls wrote replaces that write (and
  depends on what it depended on), while other clients' writes it never read stay concurrent with it.

Read-your-writes across calls (every mode): the sink returns the writes its call made (``{key: token}``, a
timestamp for last-writer-wins, a clock for causal) in ``CallResult.extras``; the client remembers those and
its own puts for ``SESSION_HORIZON_S`` and sends them with its next calls (``CallRequest.extras``, copied into
the triggers). A cached copy that does not include such a write is refetched. Pushes normally bring the
write first; this makes it certain even when a push is late or lost.

What travels in ``extras`` (short names: every trigger of a call carries them; absent when empty, so an
``lww`` call that reads and writes nothing carries and costs nothing):

- ``"s"``  client -> call: ``{key: token}`` recent writes of the client's earlier calls and puts
- ``"w"``  call -> client: ``{key: token}`` writes this call made (returned by the sink)
- ``"rr"`` ``{key: [version id or None for no value, holder address]}`` repeatable-read versions
- ``"rh"`` ``[holder address]`` executors holding snapshots of this call
- ``"c"``  ``{key: clock}`` the causal floor of each key for the call's later reads
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgpack

from cbctl.errors import CbctlError, DecodeError, NoSuchKey
from cbctl.runtime.defaults import SESSION_HORIZON_S, SESSION_MAX_KEYS, SNAPSHOT_TTL_S
from cbctl.runtime.lattices import CausalLattice, Lattice, LWWLattice, VectorClock
from cbctl.runtime.wire import serialization

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

LWW, REPEATABLE_READ, CAUSAL = "lww", "repeatable_read", "causal"
MODES = (LWW, REPEATABLE_READ, CAUSAL)

SESSION, WRITES, VERSIONS, HOLDERS, CAUSAL_FLOOR = "s", "w", "rr", "rh", "c"

#: A write's identity for read-your-writes: an LWW timestamp (ns) or a causal clock ``{node: count}``.
Token = int | dict[str, int]


# --- tokens and versions: pure functions ---------------------------------------------------------------


def write_token(lattice: Lattice) -> Token:
    """The read-your-writes token of a write: what a cached copy must include to be served."""
    if type(lattice) is LWWLattice:
        return lattice.timestamp
    if type(lattice) is CausalLattice:
        return lattice.clock.reveal()
    raise TypeError(f"no token for a {lattice.kind} lattice")


def merge_tokens(older: Token | None, newer: Token) -> Token:
    """Both writes' tokens in one (a key written twice by a call, or by two calls of a session)."""
    if type(older) is int and type(newer) is int:
        return max(older, newer)
    if isinstance(older, dict) and isinstance(newer, dict):
        merged = dict(older)
        for node, count in newer.items():
            merged[node] = max(count, merged.get(node, 0))
        return merged
    return newer  # none before, or the key changed kind in between: the later write is the one to see


def covers(lattice: Lattice | None, token: Token | VectorClock) -> bool:
    """True if ``lattice`` includes the write ``token`` identifies (an LWW value at least as late, or a
    causal value whose clock dominates)."""
    if type(token) is int:
        return type(lattice) is LWWLattice and lattice.timestamp >= token
    if type(lattice) is not CausalLattice:
        return False
    clock = token if type(token) is VectorClock else VectorClock(token)
    held = lattice.clock
    return held == clock or held.dominates(clock)  # equal is the common case: the version the call saw


def version_of(lattice: Lattice | None) -> list[Any] | None:
    """A small id of one version of a key, for repeatable read: (timestamp, writer, tombstone) for an LWW
    value, a digest of anything else; None for no value."""
    if lattice is None:
        return None
    if type(lattice) is LWWLattice:
        return [lattice.timestamp, lattice.writer, lattice.tombstone]
    return [hashlib.blake2b(msgpack.packb(lattice.to_wire()), digest_size=12).hexdigest()]


def reveal(key: str, lattice: Lattice | None, mode: str, owned: bool = False) -> Any:
    """The user's value of a key: decoded; under ``causal``, or for a causal value, the list of its
    concurrent values (sorted by encoding, so every reader lists them in the same order). ``owned``: nothing
    else uses the lattice's received frames (a client's get; an executor's read, whose cache holds views of them,
    see ``cache.held``), so a large array may be made over them without a copy; else arrays are copies."""
    if lattice is None or (type(lattice) is LWWLattice and lattice.tombstone):
        raise NoSuchKey(f"no value is stored under {key!r} (never written, deleted, or ephemeral and gone: "
                        "its ttl passed or the store restarted): write one with put first")
    try:
        if type(lattice) is LWWLattice:
            value = serialization.decode(lattice.value, owned=owned)
            return [value] if mode == CAUSAL else value
        if type(lattice) is CausalLattice:
            return [serialization.decode(v) for v in lattice.reveal()]
    except DecodeError as exc:
        raise serialization.renamed(exc, f"the value under {key!r}") from None
    raise CbctlError(f"key {key!r} holds a {lattice.kind} lattice, which cb.get cannot read")


def merge_extras(all_extras: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The extras of a step that joins several upstream triggers: writes, holders and causal floors are
    unions, repeatable-read versions keep the first upstream's (edge order); anything else (other features'
    entries, the client's session) is the first upstream's."""
    merged: dict[str, Any] = {}
    for extras in all_extras:
        for name, value in extras.items():
            if name not in merged:
                merged[name] = list(value) if name == HOLDERS else dict(value) if name in (
                    WRITES, VERSIONS, CAUSAL_FLOOR) else value
            elif name == WRITES:
                for key, token in value.items():
                    merged[name][key] = merge_tokens(merged[name].get(key), token)
            elif name == VERSIONS:
                for key, version in value.items():
                    merged[name].setdefault(key, version)
            elif name == HOLDERS:
                merged[name].extend(h for h in value if h not in merged[name])
            elif name == CAUSAL_FLOOR:
                for key, clock in value.items():
                    merged[name][key] = merge_tokens(merged[name].get(key), clock)
    return merged


def causal_version(floor: dict[str, VectorClock], key: str, encoded: bytes, writer_id: str,
                   counter: CausalCounter) -> CausalLattice:
    """A causal write of ``key`` by a call whose causal floor is ``floor``: its clock is the floor of the key
    (everything the call read or wrote of it) with the writer's entry raised past it, so it dominates those
    versions and no others; its dependencies are the floor of every other key."""
    base = floor.get(key)
    own = VectorClock({writer_id: counter.next(base.clock.get(writer_id, 0) if base is not None else 0)})
    clock = own if base is None else base.merge(own)
    return CausalLattice(clock, {other: clock_ for other, clock_ in floor.items() if other != key}, [encoded])


# --- per-step state --------------------------------------------------------------------------------------


class CallSession:
    """What one running step knows of its call's consistency state; ``outgoing`` is what its successors
    (or, at the sink, the client) receive. The upstream's writes, versions and holders are shared until this
    step adds to them (copied then), so a step that only reads passes its extras on as they came."""

    __slots__ = ("call_id", "mode", "extras", "client_tokens", "writes", "versions", "holders", "seen", "floor",
                 "changed", "floor_changed")

    def __init__(self, call_id: str, mode: str, extras: dict[str, Any]) -> None:
        self.call_id = call_id
        self.mode = mode
        self.extras = extras
        self.client_tokens: dict[str, Token] = extras.get(SESSION) or {}
        self.writes: dict[str, Token] = extras.get(WRITES) or {}
        self.versions: dict[str, list[Any]] = extras.get(VERSIONS) or {}
        self.holders: list[str] = extras.get(HOLDERS) or []
        self.changed = False  # writes, versions and holders are still the upstream's (not to be mutated)
        self.seen: dict[str, Lattice | None] = {}  # repeatable read: versions this step already resolved
        self.floor: dict[str, VectorClock] = {}
        if mode == CAUSAL:
            # Only what this call observed or wrote: the floor of a key is always the clock of a version whose
            # dependencies are in the floor too. (The client's tokens are clocks without their dependencies,
            # so they only make reads fresh, in ``freshness``.)
            for key, clock in (extras.get(CAUSAL_FLOOR) or {}).items():
                self.floor[key] = VectorClock(clock)
        self.floor_changed = False  # the floor is still the upstream's

    def freshness(self, key: str) -> Callable[[Lattice | None], bool] | None:
        """The check a cached copy of ``key`` must pass to be served, or None when any copy will do: it must
        include the client's earlier writes of the key and (causal) reach the call's floor for it."""
        token: Any = self.floor.get(key) if self.floor else None
        client = self.client_tokens.get(key) if self.client_tokens else None
        if client is not None:
            if token is None:
                token = client
            elif isinstance(client, dict):
                token = token.merge(VectorClock(client))
        if token is None:
            return None
        return lambda lattice: covers(lattice, token)

    def raise_floor(self, key: str, clock: VectorClock) -> None:
        current = self.floor.get(key)
        if current is None:
            self.floor[key] = clock
        elif current != clock:
            merged = current.merge(clock)
            if merged == current:
                return
            self.floor[key] = merged
        else:
            return
        self.floor_changed = True

    def observe(self, key: str, lattice: Lattice | None) -> None:
        """Causal: later reads of ``key`` and of everything it depends on must not go below this version."""
        if type(lattice) is CausalLattice:
            clock = lattice.clock
            current = self.floor.get(key)
            if current is not None and current == clock:
                # this exact version was observed before in the call (its dependencies are in the floor
                # already) or written by it (its dependencies were the floor): nothing to raise
                return
            self.raise_floor(key, clock)
            for dep, dep_clock in lattice.dependencies.items():
                self.raise_floor(dep, dep_clock)

    def _own(self) -> None:
        if not self.changed:
            self.writes, self.versions, self.holders = dict(self.writes), dict(self.versions), list(self.holders)
            self.changed = True

    def record_write(self, key: str, token: Token) -> None:
        self._own()
        self.writes[key] = merge_tokens(self.writes.get(key), token)

    def record_version(self, key: str, lattice: Lattice | None, holder: str) -> None:
        self._own()
        self.versions[key] = [version_of(lattice), holder]
        if holder not in self.holders:
            self.holders.append(holder)
        self.seen[key] = lattice

    def outgoing(self) -> dict[str, Any]:
        if not self.changed and not self.floor_changed:
            return self.extras
        extras = dict(self.extras)
        if self.writes:
            extras[WRITES] = self.writes
        if self.versions:
            extras[VERSIONS] = self.versions
            extras[HOLDERS] = self.holders
        if self.floor:
            extras[CAUSAL_FLOOR] = {key: clock.reveal() for key, clock in self.floor.items()}
        return extras


class SnapshotTable:
    """Versions first read (or written) on this executor by repeatable-read calls still running."""

    def __init__(self, ttl_s: float = SNAPSHOT_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._calls: dict[str, tuple[float, dict[str, Lattice | None]]] = {}  # in order of first keep
        self.expired = 0

    def __len__(self) -> int:
        return len(self._calls)

    def keep(self, call_id: str, key: str, lattice: Lattice | None, now: float) -> None:
        held = self._calls.get(call_id)
        if held is None:
            held = self._calls[call_id] = (now, {})
        held[1][key] = lattice

    def find(self, call_id: str, key: str) -> tuple[bool, Lattice | None]:
        held = self._calls.get(call_id)
        if held is None or key not in held[1]:
            return False, None
        return True, held[1][key]

    def release(self, call_ids: Iterable[str]) -> None:
        for call_id in call_ids:
            self._calls.pop(call_id, None)

    def expire(self, now: float) -> int:
        """Drop snapshots older than the TTL (their release never came); returns how many."""
        dropped = 0
        for call_id, (started, _) in list(self._calls.items()):
            if now - started <= self.ttl_s:
                break  # kept in order of first keep: the rest are younger
            del self._calls[call_id]
            dropped += 1
        self.expired += dropped
        return dropped


class CausalCounter:
    """This executor's entry in the clocks of its causal writes: strictly increasing, and, seeded from the
    wall clock in microseconds, above what an earlier run of the same executor id used."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._last = 0

    def next(self, floor: int = 0) -> int:
        self._last = max(self._last + 1, self._clock_ns() // 1000, floor + 1)
        return self._last


class ClientSession:
    """A client's recent writes (its calls' and its own puts), sent with its next calls so that no cache
    serves them a version older than their own writes. Thread-safe; bounded by age and count."""

    def __init__(self, horizon_s: float = SESSION_HORIZON_S, max_keys: int = SESSION_MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.horizon_s = horizon_s
        self.max_keys = max_keys
        self._clock = clock
        self._tokens: collections.OrderedDict[str, tuple[Token, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def record(self, writes: dict[str, Token]) -> None:
        now = self._clock()
        with self._lock:
            for key, token in writes.items():
                old = self._tokens.pop(key, None)
                self._tokens[key] = (token if old is None else merge_tokens(old[0], token), now)
            while len(self._tokens) > self.max_keys:
                self._tokens.popitem(last=False)

    def record_result(self, extras: dict[str, Any]) -> None:
        """Remember the writes a call's result reports (``CallResult.extras``)."""
        writes = extras.get(WRITES)
        if writes:
            self.record(writes)

    def extras(self) -> dict[str, Any]:
        """What the next call carries: ``{}`` when this client wrote nothing recently."""
        if not self._tokens:
            return {}
        cutoff = self._clock() - self.horizon_s
        with self._lock:
            while self._tokens:
                key, (_, at) = next(iter(self._tokens.items()))
                if at >= cutoff:
                    break
                del self._tokens[key]
            if not self._tokens:
                return {}
            return {SESSION: {key: token for key, (token, _) in self._tokens.items()}}


def with_client_session(extras: dict[str, Any], request_extras: Any) -> dict[str, Any]:
    """The scheduler's part: a call's trigger extras plus the client's session from ``CallRequest.extras``.
    Only the session is taken (a client must not set other features' entries); a malformed one is dropped."""
    session = request_extras.get(SESSION) if isinstance(request_extras, dict) else None
    if not isinstance(session, dict) or not session:
        return extras
    return {**extras, SESSION: session}


def with_continued_call(extras: dict[str, Any], continued_extras: Any) -> dict[str, Any]:
    """The scheduler's part for a call handed on with ``cbctl.Continue``: the client's session, and the writes
    the call made before the hand-off, so the final sink still returns them to the client (read-your-writes)."""
    extras = with_client_session(extras, continued_extras)
    writes = continued_extras.get(WRITES) if isinstance(continued_extras, dict) else None
    if not isinstance(writes, dict) or not writes:
        return extras
    return {**extras, WRITES: writes}
