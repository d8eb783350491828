"""Multi-exec: a DAG function that runs once per upstream result, as each arrives (Cloudburst's MULTIEXEC).

A DAG declares its multi-exec functions by name, ``cbctl.dag(name, fns, edges, multiexec=[f, ...])``.
The exact semantics:

- A multi-exec function runs once per trigger it receives, as soon as that trigger arrives, with that
  one upstream result as its only argument (a multi-exec source runs once, with the call's arguments).
  So with upstream functions that each run once, it runs once per upstream function; downstream of
  another multi-exec function it runs once per result of that function (results stream through).
- Each of its results goes on to its successors. A multi-exec successor runs once per result; a normal
  successor runs once per call, when every result has arrived, and receives for that upstream one
  argument: the list of all its results, in the order they arrived.
- If the sink is multi-exec, the caller receives that list: every result of the sink, in completion order.
- The call fails with the first error of any run (later results of a failed call are dropped).

Example: ``edges=[(split, model_a), (split, model_b), (split, model_c), (model_a, score), (model_b, score),
(model_c, score), (score, best)]`` with ``multiexec=[score]``: ``score`` runs three times, each time with
one model's output as soon as that model finishes, and ``best(cb, scores)`` runs once with the list of
the three scores. Without ``best`` (``score`` the sink), the call returns that list of three scores.

The scheduler computes, once per plan, how many times each multi-exec function runs in a call and sends
it along in ``DagTrigger.extras['mx']`` (absent for DAGs without multi-exec, which take none of this path).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from cbctl.errors import InvalidDag
from cbctl.runtime.dag import topological_order, upstream_of
from cbctl.runtime.wire import serialization
from cbctl.runtime.wire.messages import CallResult, DagTrigger

#: The DAG option naming its multi-exec functions.
OPTION = "multiexec"
#: ``DagTrigger.extras`` key: ``{multi-exec function: how many times it runs in one call}``.
EXTRAS_KEY = "mx"

ReadyEntry = tuple[DagTrigger, list[DagTrigger]]


def validate(dag: str, functions: Sequence[str], option: Any) -> list[str]:
    """The DAG's multi-exec function names, checked: a list of distinct functions of the DAG."""
    if isinstance(option, str) or not isinstance(option, (list, tuple)):
        raise InvalidDag(f"DAG {dag!r}: multiexec must be a list of its functions, got {option!r}")
    names = list(option)
    for name in names:
        if name not in functions:
            raise InvalidDag(f"DAG {dag!r}: multiexec names {name!r}, which is not one of its functions "
                             f"({', '.join(functions)})")
    if len(set(names)) != len(names):
        raise InvalidDag(f"DAG {dag!r}: multiexec names a function twice")
    return names


def run_counts(functions: Sequence[str], edges: Sequence[Sequence[str]], multiexec: Sequence[str]) -> dict[str, int]:
    """How many times each function runs in one call: once, except a multi-exec function, which runs once
    per result of each of its upstream functions."""
    pairs = [(a, b) for a, b in edges]
    order = topological_order(functions, pairs) or list(functions)
    runs: dict[str, int] = {}
    for fn in order:
        upstream = upstream_of(pairs, fn)
        runs[fn] = sum(runs[u] for u in upstream) if fn in multiexec and upstream else 1
    return runs


def plan_extras(functions: Sequence[str], edges: Sequence[Sequence[str]], options: dict[str, Any]) -> dict[str, Any]:
    """What every trigger of a call of this DAG carries for multi-exec; empty for an ordinary DAG."""
    multiexec = options.get(OPTION) or ()
    if not multiexec:
        return {}
    runs = run_counts(functions, edges, multiexec)
    return {EXTRAS_KEY: {fn: runs[fn] for fn in multiexec}}


_list_of = serialization.encode_list  # the encoding of the list of already-encoded values


class MultiExecState:
    """An executor's bookkeeping for calls of DAGs with multi-exec functions: gathers of many results into
    one argument, gathers of a multi-exec sink's results into the call's result, and calls already failed.
    Used only from the executor's one thread."""

    def __init__(self) -> None:
        self.gathers: dict[tuple[str, str], dict[str, list[DagTrigger]]] = {}
        self.sink_results: dict[str, list[bytes]] = {}
        self.started: dict[Any, float] = {}
        self.failed: collections.OrderedDict[str, float] = collections.OrderedDict()

    def on_trigger(self, trigger: DagTrigger, ready: collections.deque[ReadyEntry]) -> bool:
        """Queue or hold ``trigger`` if multi-exec decides its fate; False leaves it to the ordinary join."""
        counts: dict[str, int] = trigger.extras[EXTRAS_KEY]
        function = trigger.function
        if function in counts:
            ready.append((trigger, [trigger]))  # runs now, on this one result
            return True
        upstream = upstream_of(trigger.edges, function)
        if not any(u in counts for u in upstream):
            return False
        key = (trigger.call_id, function)
        arrived = self.gathers.get(key)
        if arrived is None:
            arrived = self.gathers[key] = {u: [] for u in upstream}
            self.started[key] = time.monotonic()
        arrived[trigger.source].append(trigger)
        if any(len(arrived[u]) < counts.get(u, 1) for u in upstream):
            return True
        del self.gathers[key], self.started[key]
        inputs = [dataclasses.replace(arrived[u][0], payload=_list_of([t.payload for t in arrived[u]]))
                  if u in counts else arrived[u][0] for u in upstream]
        ready.append((trigger, inputs))
        return True

    def on_result(self, trigger: DagTrigger, result: CallResult) -> CallResult | None:
        """The result to send the caller now, or None to hold it (a multi-exec sink with runs to come) or drop
        it (its call already failed)."""
        call_id = trigger.call_id
        if call_id in self.failed:
            return None
        if not result.ok:
            self.failed[call_id] = time.monotonic()
            self.sink_results.pop(call_id, None)
            self.started.pop(call_id, None)
            return result
        expected = trigger.extras[EXTRAS_KEY].get(trigger.function, 0)
        if not expected:
            return result  # an ordinary sink of a DAG that has multi-exec functions elsewhere
        results = self.sink_results.get(call_id)
        if results is None:
            results = self.sink_results[call_id] = []
            self.started[call_id] = time.monotonic()
        results.append(result.value)
        if len(results) < expected:
            return None
        del self.sink_results[call_id], self.started[call_id]
        return dataclasses.replace(result, value=_list_of(results))

    def expire(self, older_than_s: float) -> list[Any]:
        """Forget gathers and failed calls older than ``older_than_s`` (their remaining triggers never
        came); returns the keys of the gathers dropped, for the caller to log."""
        cutoff = time.monotonic() - older_than_s
        dropped = [key for key, started in self.started.items() if started < cutoff]
        for key in dropped:
            del self.started[key]
            if isinstance(key, tuple):
                self.gathers.pop(key, None)
            else:
                self.sink_results.pop(key, None)
        while self.failed and next(iter(self.failed.values())) < cutoff:
            self.failed.popitem(last=False)
        return dropped
