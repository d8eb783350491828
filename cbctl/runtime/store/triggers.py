"""Storage-triggered calls: every put to a key under a watched prefix calls a function or DAG with
``(key, value)``, asynchronously, at least once; or, Pheromone-style, a bucket of puts calls it with the keys
that filled it (a ``batch``, a ``window``, a ``join``).

Where things live:
- A trigger is a record in the store under ``__cb/trigger/NAME`` (``{name, prefix, function}``,
  ``trigger_records.py``), written and removed by a scheduler (``AddTrigger`` / ``RemoveTrigger`` in
  ``scheduler/triggers.py``, which check the name, the prefix and that the function or DAG is registered).
  Adding a trigger under an existing name replaces it.
- The store node sees every write, so it keeps the index of triggers itself (``StoreTriggers``, rebuilt
  from its data at start and updated as trigger records are written) and matches each put's key against
  the prefixes. A match becomes a ``CallRequest`` to a scheduler, sent by the store process
  (``TriggerDispatcher``) once the put is in the write-ahead log, with the store's own results socket as
  the response address; the put's acknowledgement never waits for it.

Semantics a user can rely on (the README repeats them):
- The function receives ``(key, value)``: the key written and its value after that put (two quick puts
  to one key may both report the later value). Deletes and ``__cb/`` keys never fire.
- Bucket kinds (one per trigger) gather the distinct keys put since the trigger last fired, in arrival order:
  ``batch=N`` fires once N keys under the prefix arrived; ``window=T`` fires every T seconds with the keys
  that arrived under the prefix in that window, and not at all when none did; ``join=[k1, k2, ...]`` fires
  once every named key was put. The function receives ``(keys)``, or with ``values=True``
  ``(keys, values)``: each key's value when the trigger fires (a key deleted or expired by then is left out).
  Ephemeral puts count like durable ones. What a bucket gathered is in memory: a store restart forgets it.
  With ``values=True`` the values travel in the call, so their sum is bounded by the cluster's value limit;
  a firing over it is not sent and counts as an error (use keys and ``cb.get``).
- At least once: the store keeps each triggered call until its result (success or error) comes back and
  sends it again after ``TRIGGER_RETRY_S`` without one (up to ``TRIGGER_MAX_ATTEMPTS`` sends), so a call lost
  with a crashed scheduler or executor is redone. A call that is merely slower than the retry interval runs
  twice: trigger functions should be idempotent (write results under keys derived from the input key). A
  crash of the store itself forgets the calls still in flight (they are not in the log).
- No order between the calls of different puts.
- Chains are bounded: a put made by a triggered call carries which call of its chain that is
  (``PutRequest.trigger_depth``, from ``TRIGGER_DEPTH_EXTRA`` in the call's extras), and a put by call
  ``max_depth`` of a chain fires nothing (a function that writes under its own watched prefix is a loop). The put
  itself is stored; the store logs an error (at most one line a second), counts ``trigger_depth_stops`` and
  records it as the trigger's last error in ``cbctl trigger ls``. ``cbctl up --max-trigger-depth N`` sets it.
- Metrics (``Client.store_stats()``): ``triggers``, ``triggered_calls`` (first sends), ``trigger_retries``,
  ``trigger_errors`` (calls that came back failed, the last message per trigger in ``trigger_stats``),
  ``trigger_pending`` (in flight), ``trigger_dropped`` (given up after the last attempt or over the bound).
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zmq

from cbctl.errors import NoSuchKey, ProtocolError
from cbctl.runtime import cluster
from cbctl.runtime.defaults import (
    MAX_MESSAGE_BYTES,
    MAX_TRIGGER_DEPTH,
    RESERVED_PREFIX,
    TRIGGER_MAX_ATTEMPTS,
    TRIGGER_OUTBOX_LIMIT,
    TRIGGER_RETRY_S,
)
from cbctl.runtime.lattices import Lattice, LWWLattice
from cbctl.runtime.process import ProcessConfig, drain, new_socket
from cbctl.runtime.trigger_records import PREFIX, TriggerRecord, record_bytes
from cbctl.runtime.wire import auth, serialization
from cbctl.runtime.wire.messages import TRIGGER_DEPTH_EXTRA, CallRequest, CallResult, unpack

log = logging.getLogger(__name__)

#: Seconds between re-reads of the cluster file while the store knows no scheduler to send calls to.
_SCHEDULER_LOOKUP_S = 1.0


@dataclass
class _Bucket:
    """What a batch, window or join trigger gathered since it last fired."""

    arrived: dict[str, None]  # distinct keys, in arrival order
    wanted: frozenset[str]  # a join's keys
    next_due: float  # a window's next firing
    window_s: float  # a window's length (0: not a window)
    depth: int = 0  # the deepest chain of triggered calls that made one of the arrived puts


@dataclass
class _InFlight:
    frame: bytes
    trigger: str
    key: str
    sent_at: float
    attempts: int


class StoreTriggers:
    """The store node's trigger index and the triggered calls it has not seen finish. Pure bookkeeping:
    the store's loop hands it every write (``on_write``) and every result (``on_result``), and sends what
    ``take_due`` returns. Used only from the store's one thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, retry_s: float = TRIGGER_RETRY_S,
                 max_attempts: int = TRIGGER_MAX_ATTEMPTS, limit: int = TRIGGER_OUTBOX_LIMIT,
                 lookup: Callable[[str], Lattice | None] = lambda _key: None,
                 max_args_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_TRIGGER_DEPTH) -> None:
        self.clock = clock
        self.max_depth = max_depth
        self.lookup = lookup  # a key's current value, for values=True buckets
        self.max_args_bytes = max_args_bytes
        self.buckets: dict[str, _Bucket] = {}  # per batch, window and join trigger
        self.windows = 0  # how many of them are windows: tick() costs nothing without
        self.retry_s = retry_s
        self.max_attempts = max_attempts
        self.limit = limit
        self.response_address = ""  # the dispatcher's results socket, set before the store serves
        self.index: dict[str, TriggerRecord] = {}
        self.new: list[bytes] = []
        self.in_flight: collections.OrderedDict[str, _InFlight] = collections.OrderedDict()  # oldest send first
        self.per_trigger: dict[str, dict[str, Any]] = {}
        self.counters = {"triggered_calls": 0, "trigger_retries": 0, "trigger_errors": 0, "trigger_dropped": 0,
                         "trigger_depth_stops": 0}
        self._ids = 0
        self._boot = os.urandom(4).hex()  # call ids stay unique across store restarts
        self._last_error_log = 0.0

    def load(self, records: Iterable[tuple[str, Lattice]]) -> None:
        """Rebuild the index from the store's recovered trigger records (``(key, lattice)`` pairs)."""
        for key, lattice in records:
            if key.startswith(PREFIX):
                self._index(key, lattice)

    def on_write(self, key: str, lattice: Lattice, depth: int = 0) -> None:
        """Called with the merged value after every put or delete of ``key``; ``depth``: the put was made by call
        ``depth`` of a chain of triggered calls (0: by anything else)."""
        if key.startswith(RESERVED_PREFIX):
            if key.startswith(PREFIX):
                self._index(key, lattice)
            return
        if not self.index or (isinstance(lattice, LWWLattice) and lattice.tombstone):
            return
        for record in self.index.values():
            bucket = self.buckets.get(record.name) if record.kind != "put" else None
            if bucket is None:
                if key.startswith(record.prefix):
                    if depth >= self.max_depth:
                        self._stop_chain(record, key, depth)
                    else:
                        self._fire(record, key, lattice, depth + 1)
            elif bucket.wanted:
                if key in bucket.wanted:
                    bucket.arrived[key] = None
                    bucket.depth = max(bucket.depth, depth)
                    if len(bucket.arrived) == len(bucket.wanted):
                        self._fire_bucket(record, bucket)
            elif key.startswith(record.prefix):
                bucket.arrived[key] = None
                bucket.depth = max(bucket.depth, depth)
                if record.batch and len(bucket.arrived) >= record.batch:
                    self._fire_bucket(record, bucket)

    def tick(self) -> None:
        """Fire the windows that are due and gathered something (the store's loop calls this every turn)."""
        if not self.windows:
            return
        now = self.clock()
        for name, bucket in self.buckets.items():
            record = self.index.get(name)
            if record is None or not bucket.window_s or now < bucket.next_due:
                continue
            bucket.next_due = now + bucket.window_s
            if bucket.arrived:
                self._fire_bucket(record, bucket)

    def _index(self, key: str, lattice: Lattice) -> None:
        name = key[len(PREFIX):]
        try:
            # plain msgpack, no ext hook: a record is a dict of strings, and nothing here may unpickle
            raw = msgpack.unpackb(record_bytes(key, lattice), raw=False)
            record = TriggerRecord(**raw)
            _check_record(record)
        except NoSuchKey:
            if self.index.pop(name, None) is not None:
                self._drop_bucket(name)
                log.info("trigger %s removed", name)
            return
        except (TypeError, ValueError) as exc:
            log.warning("ignored a malformed trigger record %s: %s", key, exc)
            return
        if self.index.get(name) != record:  # a new definition starts with an empty bucket
            self._drop_bucket(name)
            if record.kind != "put":
                self.buckets[name] = _Bucket({}, frozenset(record.join), self.clock() + record.window_s,
                                             record.window_s)
                self.windows += bool(record.window_s)
        self.index[name] = record
        self.per_trigger.setdefault(name, {"fired": 0, "errors": 0, "last_error": ""})
        log.info("trigger %s (%s): keys under %r call %s", name, record.kind, record.prefix, record.function)

    def _drop_bucket(self, name: str) -> None:
        bucket = self.buckets.pop(name, None)
        if bucket is not None and bucket.window_s:
            self.windows -= 1

    def _stop_chain(self, record: TriggerRecord, key: str, depth: int) -> None:
        self.counters["trigger_depth_stops"] += 1
        stats = self.per_trigger.setdefault(record.name, {"fired": 0, "errors": 0, "last_error": ""})
        stats["errors"] += 1
        stats["last_error"] = (f"TriggerDepthExceeded: the put of {key[:80]!r} was made by call {depth} of a chain "
                               f"of triggered calls, the most allowed (--max-trigger-depth {self.max_depth}): it "
                               "was stored but fired nothing (does the function write under its own prefix?)")
        now = self.clock()
        if now - self._last_error_log >= 1.0:  # a loop stops here on every put: one line a second
            self._last_error_log = now
            log.error("trigger %s: %s", record.name, stats["last_error"])

    def _fire(self, record: TriggerRecord, key: str, lattice: Lattice, depth: int = 1) -> None:
        # the argument list [key, value] without decoding the value: an array header, then both encodings
        args = msgpack.Packer().pack_array_header(2) + serialization.encode(key, out_of_band=False) + _encoded(lattice)
        self._send(record, key, args, depth)

    def _fire_bucket(self, record: TriggerRecord, bucket: _Bucket) -> None:
        keys = list(bucket.arrived)
        depth, bucket.depth = bucket.depth, 0
        bucket.arrived.clear()
        if depth >= self.max_depth:  # a put of the chain's last allowed call filled it: the chain stops here
            self._stop_chain(record, keys[-1], depth)
            return
        packer = msgpack.Packer()
        if not record.values:
            args = packer.pack_array_header(1) + serialization.encode(keys, out_of_band=False)
        else:
            present, values = [], []
            for key in keys:
                lattice = self.lookup(key)
                if lattice is None or (isinstance(lattice, LWWLattice) and lattice.tombstone):
                    continue  # deleted or expired since it arrived
                present.append(key)
                values.append(_encoded(lattice))
            args = (packer.pack_array_header(2) + serialization.encode(present, out_of_band=False)
                    + packer.pack_array_header(len(values)) + b"".join(values))
        what = f"{len(keys)} keys ({keys[0]}, ...)" if len(keys) > 1 else keys[0]
        if len(args) > self.max_args_bytes:
            self.per_trigger[record.name]["fired"] += 1
            self._count_error(record.name, what, f"MessageTooLarge: the values of {len(keys)} keys are "
                              f"{len(args)} bytes, over the cluster's limit of {self.max_args_bytes} per call: "
                              "add the trigger without values and read them with cb.get")
            return
        self._send(record, what, args, depth + 1)

    def _send(self, record: TriggerRecord, key: str, args: bytes, depth: int) -> None:
        self._ids += 1
        call_id = f"trigger-{self._boot}-{self._ids}"
        frame = CallRequest(call_id, record.function, args, {}, self.response_address, False, "lww", [],
                            {TRIGGER_DEPTH_EXTRA: depth}).pack()
        if len(self.in_flight) >= self.limit:
            _, oldest = self.in_flight.popitem(last=False)
            self.counters["trigger_dropped"] += 1
            log.warning("more than %d triggered calls in flight: forgot the one for %s", self.limit, oldest.key)
        self.in_flight[call_id] = _InFlight(frame, record.name, key, self.clock(), 1)
        self.new.append(frame)
        self.counters["triggered_calls"] += 1
        self.per_trigger[record.name]["fired"] += 1

    def take_due(self) -> list[bytes]:
        """Frames to send now: the calls fired since the last take, then those due for a retry."""
        due, self.new = self.new, []
        now = self.clock()
        while self.in_flight:
            call_id, call = next(iter(self.in_flight.items()))
            if now - call.sent_at < self.retry_s:
                break
            self.in_flight.move_to_end(call_id)
            if call.attempts >= self.max_attempts:
                del self.in_flight[call_id]
                self.counters["trigger_dropped"] += 1
                log.warning("trigger %s: gave up on the call for %s after %d sends without a result",
                            call.trigger, call.key, call.attempts)
                continue
            call.attempts += 1
            call.sent_at = now
            self.counters["trigger_retries"] += 1
            due.append(call.frame)
        return due

    def on_result(self, result: CallResult) -> None:
        call = self.in_flight.pop(result.call_id, None)
        if call is None or result.ok:
            return  # a duplicate, or done
        self._count_error(call.trigger, call.key, f"{result.remote_type or result.error_type}: {result.message}")

    def _count_error(self, trigger: str, key: str, error: str) -> None:
        self.counters["trigger_errors"] += 1
        stats = self.per_trigger.setdefault(trigger, {"fired": 0, "errors": 0, "last_error": ""})
        stats["errors"] += 1
        stats["last_error"] = error[:500]
        now = self.clock()
        if now - self._last_error_log >= 1.0:  # at most one line a second, whatever the put rate
            self._last_error_log = now
            log.warning("trigger %s: the call for %s failed: %s", trigger, key, stats["last_error"])

    def stats(self) -> dict[str, Any]:
        per_trigger = {n: dict(s) for n, s in self.per_trigger.items() if n in self.index}
        for name, bucket in self.buckets.items():
            if name in per_trigger:
                per_trigger[name]["waiting"] = len(bucket.arrived)  # gathered, not fired yet
        return {"triggers": len(self.index), **self.counters, "trigger_pending": len(self.in_flight),
                "trigger_stats": per_trigger}


def _encoded(lattice: Lattice) -> bytes:
    """A value as a function receives it, encoded: an LWW value's bytes as stored (never decoded here)."""
    if isinstance(lattice, LWWLattice):
        # a large value kept in parts is joined into one encoding here: triggered calls' arguments are inline
        return lattice.value if type(lattice.value) is bytes else serialization.inline(lattice.value)
    return serialization.encode(lattice.reveal(), out_of_band=False)  # type: ignore[return-value]


def _check_record(record: TriggerRecord) -> None:
    """The store's own check of a record it indexes (the scheduler checked it too; a record is data)."""
    if not all(isinstance(v, str) and v for v in (record.name, record.function)) or not isinstance(record.prefix, str):
        raise TypeError("name, prefix and function must be strings")
    if not isinstance(record.join, list) or not all(isinstance(k, str) and k for k in record.join):
        raise TypeError("join must be a list of keys")
    if isinstance(record.batch, bool) or not isinstance(record.batch, int) or record.batch < 0:
        raise TypeError("batch must be a count")
    if not isinstance(record.window_s, (int, float)) or not record.window_s >= 0:
        raise TypeError("window_s must be seconds")
    if sum((bool(record.join), bool(record.batch), bool(record.window_s))) > 1:
        raise ValueError("a trigger is at most one of batch, window and join")
    if not record.join and not record.prefix:
        raise ValueError("a trigger without join needs a prefix")


class TriggerDispatcher:
    """The store process's sockets for triggered calls: a DEALER to the schedulers (any of them may place a
    call) and a bound PULL where the calls' results come back."""

    def __init__(self, context: zmq.Context, config: ProcessConfig, triggers: StoreTriggers) -> None:
        self.context = context
        self.home = Path(config.home)
        self.triggers = triggers
        self.results = new_socket(context, zmq.PULL)
        triggers.response_address = config.bind(self.results, name=f"{config.name}-triggers")
        self.schedulers: zmq.Socket | None = None
        self.scheduler_addresses = list(config.scheduler_addresses)
        self.next_lookup = 0.0
        self.held: list[bytes] = []  # frames fired before any scheduler was known
        self.dropped_sends = 0

    def service(self) -> None:
        """Take the results that came back, then send what is due. Runs once per store loop turn, so with
        nothing to do it costs one socket-option read (the results socket must be emptied whenever it is
        readable, or the loop's poll would return at once forever)."""
        self.triggers.tick()
        if self.results.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            for (frame,) in drain(self.results):
                try:
                    result = unpack(frame)
                except ProtocolError as exc:
                    log.warning("dropped a bad frame on the trigger results socket: %s", exc)
                    continue
                if isinstance(result, CallResult):
                    self.triggers.on_result(result)
        if not self.triggers.in_flight and not self.triggers.new and not self.held:
            return
        due = self.triggers.take_due()
        if self.held:
            due, self.held = self.held + due, []
        if not due:
            return
        sock = self._scheduler_socket()
        if sock is None:
            self.held = due[-self.triggers.limit:]
            return
        for frame in due:
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                self.dropped_sends += 1  # still in flight: the retry sends it again

    def _scheduler_socket(self) -> zmq.Socket | None:
        if self.schedulers is not None:
            return self.schedulers
        if not self.scheduler_addresses:
            now = time.monotonic()
            if now < self.next_lookup:
                return None
            self.next_lookup = now + _SCHEDULER_LOOKUP_S
            found = cluster.ClusterFile.read(self.home)
            self.scheduler_addresses = list(found.scheduler_addresses) if found else []
            if not self.scheduler_addresses:
                return None
        sock = new_socket(self.context, zmq.DEALER)
        for address in self.scheduler_addresses:
            auth.connect(sock, address)  # DEALER spreads the calls over every scheduler
        self.schedulers = sock
        return sock

    def close(self) -> None:
        self.results.close()
        if self.schedulers is not None:
            self.schedulers.close()

