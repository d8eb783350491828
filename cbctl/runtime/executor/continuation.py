"""Continuations: a function hands its call on to another registered function or DAG.

A call's sink (or a single function) may return ``cbctl.Continue(name, *args)`` instead of a value. The
executor then sends a ``ContinueCall`` to a scheduler, which calls ``name`` with ``args`` exactly as a client
would (``args`` go to every source of a DAG) but under the same call id and response address, so the
original caller receives the final result of the chain, or its first error, and never sees the hand-off.
The number of hand-offs travels with the call (``DagTrigger.extras['depth']``); past the cluster's limit
(``cbctl up --max-continuations``, default ``defaults.MAX_CONTINUATIONS``) the call fails with
``ContinuationDepthExceeded``, so a cycle of continuations cannot run forever.

Only a sink may continue: a function in the middle of a DAG passes its value to its successors, and a
value of that DAG that was handed elsewhere would leave the successors without an input.
"""

from __future__ import annotations

import zmq

from cbctl.errors import CbctlError, ContinuationDepthExceeded, InvalidArgument
from cbctl.runtime.continuation import DEPTH_KEY, Continue
from cbctl.runtime.executor.host import ContinuationHost
from cbctl.runtime.process import send_message
from cbctl.runtime.wire import limits, serialization
from cbctl.runtime.wire.messages import ContinueCall, DagTrigger


def hand_off(executor: ContinuationHost, trigger: DagTrigger, continuation: Continue, is_sink: bool) -> None:
    """Send ``continuation`` on as the rest of ``trigger``'s call, or fail the call saying why it cannot."""
    if not is_sink:
        executor.fail(trigger, InvalidArgument(
            f"{trigger.function!r} returned cbctl.Continue but is not the sink of DAG {trigger.dag!r}: only the "
            "function whose result is the call's result may continue it"))
        return
    depth = trigger.extras.get(DEPTH_KEY, 0) + 1
    limit = executor.max_continuations
    if depth > limit:
        executor.fail(trigger, ContinuationDepthExceeded(
            f"call {trigger.call_id} was handed on with cbctl.Continue {limit} times, the limit: a cycle of "
            "continuations? (raise it with `cbctl up --max-continuations N`)"))
        return
    try:
        args = serialization.encode(list(continuation.args))
        limits.check_size(len(args), executor.max_message_bytes,
                          f"the arguments of cbctl.Continue({continuation.name!r})")
    except BaseException as exc:  # noqa: BLE001 - an argument no encoder takes (its __reduce__ is user code and
        # may raise anything), or one too large, fails the call, not the executor
        executor.fail(trigger, exc)
        return
    sockets = executor.scheduler_sockets
    if not sockets:
        executor.fail(trigger, CbctlError("this executor knows no scheduler to continue the call on"))
        return
    # This step ends the call's first part: its repeatable-read snapshots are released (the rest is a call of
    # its own), and the writes it made so far travel on, for the final sink to return them to the client. The
    # scheduler keeps only those and the client's session (read-your-writes across the hand-off).
    extras = {**trigger.extras, **executor.sessions.result_extras(trigger)}
    frame = ContinueCall(trigger.call_id, continuation.name, args, trigger.response_address, trigger.store_result,
                         trigger.consistency, depth, extras).pack()
    # any scheduler can place the rest of the call; spreading by call id keeps one chain on one scheduler
    sock = sockets[hash(trigger.call_id) % len(sockets)]
    try:
        send_message(sock, frame, zmq.NOBLOCK)
    except zmq.Again:
        executor.fail(trigger, CbctlError("the scheduler is not reading: the continuation was not sent"))
