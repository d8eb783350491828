"""Batching: one invocation of a ``batching=True`` function serves several queued calls.

When an executor is about to run a batching function, it also takes every other call of that function
already waiting in its ready queue, up to the batch limit (``cbctl up --max-batch``, default
``defaults.MAX_BATCH``), and invokes the function once for all of them. Nothing waits for a batch to
fill: a batch is what queued up while the executor was busy, so an idle executor runs a lone call as a
batch of one at no extra latency, and a loaded one amortises each invocation over up to the limit.

The calling convention, for calls ``f(a1, b1)``, ``f(a2, b2)``, ``f(a3, b3)`` in one batch::

    @cbctl.function(batching=True)
    def f(cb, a_list, b_list):          # a_list == [a1, a2, a3], b_list == [b1, b2, b3]
        return [a + b for a, b in zip(a_list, b_list)]   # result i goes to call i

Each positional parameter receives the list of that argument over the batch's calls, in queue order
(DAG steps are batched the same way: parameter j gets the list of each call's j-th upstream result). The
function must return a list (or tuple) with exactly one result per call; anything else fails every call of
the batch with ``BatchResultError``, as does an exception, since one invocation cannot tell whose input
caused it. Only calls with the same number of arguments share a batch, and calls with no arguments run one
per invocation (an empty argument list could not tell the function how many results to return).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from typing import Any

from cbctl.runtime.executor.host import BatchHost, LoadedFunction, ReadyEntry
from cbctl.runtime.wire.messages import DagTrigger


class BatchResultError(TypeError):
    """A batching function returned something other than one result per call of its batch."""


def take_matching(ready: collections.deque[ReadyEntry], function: str, version: int, limit: int) -> list[ReadyEntry]:
    """Remove and return up to ``limit`` queued calls of ``function`` that ``version`` of its code may serve,
    oldest first; the rest of the queue keeps its order."""
    if limit <= 0 or not ready:
        return []
    taken: list[ReadyEntry] = []
    kept: list[ReadyEntry] = []
    for entry in ready:
        trigger = entry[0]
        if len(taken) < limit and trigger.function == function and trigger.versions.get(function, 0) <= version:
            taken.append(entry)
        else:
            kept.append(entry)
    if taken:
        ready.clear()
        ready.extend(kept)
    return taken


def columns(argument_lists: list[list[Any]]) -> list[list[Any]]:
    """Per-call argument lists (all of one length) to per-parameter lists: the batch calling convention."""
    return [list(column) for column in zip(*argument_lists)]


def split_results(function: str, result: Any, calls: int) -> list[Any]:
    """The per-call results of one batched invocation, or ``BatchResultError`` saying what was wrong."""
    if not isinstance(result, (list, tuple)):
        raise BatchResultError(
            f"batching function {function!r} returned {type(result).__name__} for a batch of {calls} call(s): "
            f"it must return a list of {calls} results, one per call (e.g. list(array) for a numpy array)")
    if len(result) != calls:
        raise BatchResultError(
            f"batching function {function!r} returned {len(result)} results for a batch of {calls} call(s): "
            "it must return exactly one result per call, in the order of its argument lists")
    return list(result)


def run_batch(executor: BatchHost, loaded: LoadedFunction, first: ReadyEntry, started_ns: int) -> None:
    """Run ``first`` (just taken off the ready queue) together with the queued calls of the same function,
    deliver each call its own result, and account each call's share of the time."""
    name = loaded.record.name
    entries = [first, *take_matching(executor.ready, name, loaded.record.version, executor.max_batch - 1)]
    members: list[tuple[ReadyEntry, list[Any]]] = []
    for entry in entries:
        try:
            members.append((entry, executor.arguments(*entry)))
        except Exception as exc:  # e.g. a Ref to a missing key: that call fails alone
            executor.fail(entry[0], exc)
            executor.metrics.record_call(name, bool(entry[0].dag), 0, False)
    if not members:
        return
    arity = len(members[0][1])
    if arity:
        batch = [m for m in members if len(m[1]) == arity]
        later = [m for m in members if len(m[1]) != arity]
    else:
        batch, later = members[:1], members[1:]
    if later:
        # other argument counts: run those next, in their order, as batches of their own
        executor.ready.extendleft(reversed([entry for entry, _ in later]))
    triggers = [entry[0] for entry, _ in batch]
    try:
        result = loaded.target(executor.userlib, *columns([args for _, args in batch]))
        results = split_results(name, result, len(batch))
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything, KeyboardInterrupt included
        _fail_all(executor, triggers, exc)
        _account(executor, name, triggers, started_ns, ok=False)
        return
    for trigger, value in zip(triggers, results):
        executor.deliver(trigger, value)
    _account(executor, name, triggers, started_ns, ok=True)


def _fail_all(executor: BatchHost, triggers: Iterable[DagTrigger], exc: BaseException) -> None:
    for trigger in triggers:
        executor.fail(trigger, exc)


def _account(executor: BatchHost, name: str, triggers: list[DagTrigger], started_ns: int, ok: bool) -> None:
    # each call is charged an equal share, so busy time (utilization) adds up to the batch's wall time
    share = (time.perf_counter_ns() - started_ns) // len(triggers)
    for trigger in triggers:
        executor.metrics.record_call(name, bool(trigger.dag), share, ok)
