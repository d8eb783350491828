"""What the executor's helpers may see of the executor: small protocols that ``Executor`` satisfies, so that
``batching``, ``continuation`` and ``userlib`` depend on this module and never on ``executor.py`` (which
imports them). A helper that needs more of the executor adds it here, where the whole surface is visible.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Protocol

import zmq

from cbctl.runtime import registry
from cbctl.runtime.executor.sessions import SessionManager
from cbctl.runtime.metrics import ExecutorMetrics
from cbctl.runtime.wire.messages import DagTrigger

#: A call step waiting to run: its trigger and the triggers of its upstream steps (its inputs).
ReadyEntry = tuple[DagTrigger, list[DagTrigger]]


@dataclass
class LoadedFunction:
    record: registry.FunctionRecord
    target: Any  # the function, or the bound ``run`` of the constructed class


class CallOutcomes(Protocol):
    """How a helper ends a call step: with a value, or with an error (both answer the caller or pass on)."""

    def deliver(self, trigger: DagTrigger, result: Any) -> None: ...

    def fail(self, trigger: DagTrigger, exc: BaseException) -> None: ...


class BatchHost(CallOutcomes, Protocol):
    """What ``batching.run_batch`` uses: the ready queue, the batch bound, the user library, the metrics."""

    ready: collections.deque[ReadyEntry]
    max_batch: int
    userlib: Any
    metrics: ExecutorMetrics

    def arguments(self, trigger: DagTrigger, inputs: list[DagTrigger]) -> list[Any]: ...


class ContinuationHost(CallOutcomes, Protocol):
    """What ``continuation.hand_off`` uses: the limits, the schedulers' sockets, the consistency sessions."""

    max_continuations: int
    max_message_bytes: int
    scheduler_sockets: list[zmq.Socket]
    sessions: SessionManager


class UserHost(Protocol):
    """What the user library (``cb``) reaches through: the store under the call's consistency mode, this
    executor's id, and direct messages to other executors."""

    executor_id: str

    def read_key(self, key: str) -> Any: ...

    def write_key(self, key: str, value: Any) -> bool: ...

    def write_ephemeral(self, key: str, value: Any, ttl_s: float) -> None: ...

    def send_direct(self, executor_id: str, message: Any) -> None: ...

    def receive_direct(self, deadline: float | None) -> list[tuple[str, Any]]: ...
