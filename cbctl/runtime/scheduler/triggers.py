"""Storage triggers, the scheduler's side: the control requests that add, list and remove a trigger record,
and the check that a function a trigger calls is not removed (how triggers work: ``store/triggers.py``).

Each handler gets the store client and, where it must know what is registered, a callback: it never sees
the scheduler itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from cbctl.errors import InvalidArgument, NoSuchFunction, NoSuchKey
from cbctl.runtime.defaults import RESERVED_PREFIX, TRIGGER_MAX_JOIN_KEYS, TRIGGER_MIN_WINDOW_S
from cbctl.runtime.store_client import StoreClient
from cbctl.runtime.trigger_records import PREFIX, TriggerRecord, record_bytes
from cbctl.runtime.wire import serialization
from cbctl.runtime.wire.messages import AddTrigger, ListTriggers, RemoveTrigger

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def on_add(store: StoreClient, request: AddTrigger, is_registered: Callable[[str], bool]) -> dict[str, Any]:
    """Write the trigger record; ``is_registered(name)`` says (after a fresh look) whether ``name`` is a
    registered function or DAG."""
    name, prefix, function = request.name, request.prefix, request.function
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(f"trigger name {name!r} is invalid: use letters, digits, '_', '.' and '-'")
    _check_kind(request)
    bad_prefix = not isinstance(prefix, str) or not prefix or prefix.startswith(RESERVED_PREFIX)
    if bad_prefix and not (request.join and prefix == ""):  # a join names its keys: it needs no prefix
        raise InvalidArgument(f"trigger prefix {prefix!r} is invalid: use a non-empty key prefix not starting "
                              f"with {RESERVED_PREFIX!r}")
    if not isinstance(function, str) or not function:
        raise InvalidArgument(f"trigger function {function!r} is invalid: name a registered function or DAG")
    if not is_registered(function):
        raise NoSuchFunction(f"no function or DAG is registered as {function!r}: deploy it before the trigger")
    replaced = name in _load_all(store)
    record = TriggerRecord(name, prefix, function, time.time_ns(), request.batch, float(request.window_s),
                           list(dict.fromkeys(request.join)), bool(request.values))
    store.put(PREFIX + name, asdict(record))  # the store indexes it before it acknowledges
    return {**asdict(record), "kind": record.kind, "replaced": replaced}


def _check_kind(request: AddTrigger) -> None:
    """At most one of batch, window and join, each with a sensible value."""
    batch, window, join = request.batch, request.window_s, request.join
    if sum((bool(batch), bool(window), bool(join))) > 1:
        raise InvalidArgument("a trigger fires on a batch, a window or a join, not several: give one of them")
    if batch and not 1 <= batch <= TRIGGER_MAX_JOIN_KEYS:
        raise InvalidArgument(f"batch {batch!r} is invalid: give a count from 1 to {TRIGGER_MAX_JOIN_KEYS}")
    if window and not TRIGGER_MIN_WINDOW_S <= window <= 86_400:
        raise InvalidArgument(f"window {window!r} is invalid: give seconds from {TRIGGER_MIN_WINDOW_S} to 86400")
    if join:
        if len(join) > TRIGGER_MAX_JOIN_KEYS:
            raise InvalidArgument(f"join names {len(join)} keys: at most {TRIGGER_MAX_JOIN_KEYS}")
        for key in join:
            if not isinstance(key, str) or not key or key.startswith(RESERVED_PREFIX):
                raise InvalidArgument(f"join key {key!r} is invalid: use non-empty keys not starting with "
                                      f"{RESERVED_PREFIX!r}")


def on_list(store: StoreClient, _request: ListTriggers) -> list[dict[str, Any]]:
    records = _load_all(store)
    per_trigger = store.stats().get("trigger_stats", {})
    empty = {"fired": 0, "errors": 0, "last_error": ""}
    return [{**asdict(records[n]), "kind": records[n].kind, **per_trigger.get(n, empty)} for n in sorted(records)]


def on_remove(store: StoreClient, request: RemoveTrigger) -> dict[str, Any]:
    if request.name not in _load_all(store):
        raise InvalidArgument(f"no trigger is named {request.name!r}: see `cbctl trigger ls`")
    store.delete(PREFIX + request.name)
    return {"removed": request.name}


def check_not_triggered(store: StoreClient, function: str) -> None:
    """Refuse to remove a function or DAG that a trigger still calls (each put would fail to call it)."""
    users = sorted(r.name for r in _load_all(store).values() if r.function == function)
    if users:
        raise InvalidArgument(f"{function!r} is called by trigger(s) {', '.join(users)}: remove those first "
                              "with `cbctl trigger rm NAME`")


def _load_all(store: StoreClient) -> dict[str, TriggerRecord]:
    keys = store.list_keys(PREFIX)
    records = {}
    for key, lattice in zip(keys, store.get_lattices(keys) if keys else []):
        try:
            record = TriggerRecord(**serialization.decode(record_bytes(key, lattice)))
        except (NoSuchKey, TypeError, ValueError):
            continue
        records[record.name] = record
    return records
