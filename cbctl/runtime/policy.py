"""Which executor runs what: pure placement logic fed with executor statuses (no sockets, no clocks
but the one passed in), so it is unit-tested without processes.

This is the simple least-loaded policy: among live executors of the function's type, the one with the
fewest calls believed queued (its last reported queue plus what was sent to it since), ties broken at
random; executors whose status went silent are skipped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cbctl.errors import NoExecutorAvailable
from cbctl.runtime.messages import ExecutorStatus

#: Seconds without a status after which an executor is considered gone.
STATUS_SILENCE_S = 5.0


@dataclass
class ExecutorView:
    executor_id: str
    address: str
    executor_type: str
    pinned: set[str] = field(default_factory=set)
    utilization: float = 0.0
    queue_length: int = 0
    sent_since_status: int = 0
    last_seen: float = 0.0
    status: ExecutorStatus | None = None


class Policy:
    def __init__(self, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.executors: dict[str, ExecutorView] = {}

    def process_status(self, status: ExecutorStatus) -> None:
        if not status.running:
            self.executors.pop(status.executor_id, None)
            return
        view = self.executors.get(status.executor_id)
        if view is None:
            view = self.executors[status.executor_id] = ExecutorView(
                status.executor_id, status.address, status.executor_type)
        view.address = status.address
        view.pinned = set(status.pinned)
        view.utilization = status.utilization
        view.queue_length = status.queue_length
        view.sent_since_status = 0
        view.last_seen = self.clock()
        view.status = status

    def pick_executor(self, function: str, gpu: bool = False, refs: list[str] | None = None) -> ExecutorView:
        wanted = "gpu" if gpu else "cpu"
        now = self.clock()
        best: list[ExecutorView] = []
        best_load = None
        for view in self.executors.values():
            if view.executor_type != wanted or now - view.last_seen > STATUS_SILENCE_S:
                continue
            load = view.queue_length + view.sent_since_status
            if best_load is None or load < best_load:
                best, best_load = [view], load
            elif load == best_load:
                best.append(view)
        if not best:
            kind = "GPU" if gpu else "CPU"
            raise NoExecutorAvailable(
                f"no live {kind} executor can run {function!r}"
                + (": start the cluster with `cbctl up --gpu-executors N`" if gpu else ": check `cbctl status`")
            )
        chosen = best[0] if len(best) == 1 else self.rng.choice(best)
        chosen.sent_since_status += 1
        return chosen

    def periodic_update(self) -> None:
        now = self.clock()
        for executor_id in [e for e, v in self.executors.items() if now - v.last_seen > 4 * STATUS_SILENCE_S]:
            del self.executors[executor_id]

    def describe(self) -> dict[str, Any]:
        return {
            "executors": {e: {"type": v.executor_type, "pinned": sorted(v.pinned), "utilization": v.utilization,
                              "queue_length": v.queue_length} for e, v in self.executors.items()},
        }
