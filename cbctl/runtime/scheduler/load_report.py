"""The scheduler's load reports to the head's supervisor, which the autoscaler decides from
(``supervisor/autoscaling.py``): per CPU executor its utilization and queue from its latest status, and the
calls this scheduler holds for lack of an executor. One small frame a second on the timer, never per call; one
more at once when a call parks while the cluster autoscales, so a call to a cluster scaled to zero starts an
executor without waiting for the timer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import zmq

from cbctl.runtime.defaults import AUTOSCALE_REPORT_INTERVAL_S, POLICY_STALE_S
from cbctl.runtime.process import new_socket
from cbctl.runtime.wire.messages import ExecutorStatus, LoadReport

#: Seconds between two immediate reports (a burst of calls parking at once sends one, not one per call).
IMMEDIATE_MIN_INTERVAL_S = 0.05


def executor_figures(statuses: Mapping[str, tuple[ExecutorStatus, float]], now: float,
                     outstanding: Mapping[str, int] | None = None) -> dict[str, list[float]]:
    """``{executor id: [utilization, queued]}`` of the CPU executors that run (not leaving). ``queued`` is the
    larger of the queue in its latest status and, with placement by outstanding work, the steps the policy
    counts there now beyond the one running (fresher: it moves with every placement, not once a second). One
    whose status is late is counted fully busy: its one thread is in a long call (that is what silences it),
    and a dead one is left out by the supervisor, which knows which processes run."""
    figures = {}
    for executor_id, (status, seen) in statuses.items():
        if not status.running or status.executor_type != "cpu":
            continue
        utilization = 1.0 if now - seen > POLICY_STALE_S else min(1.0, float(status.utilization))
        queued = max(status.queue_length, (outstanding or {}).get(executor_id, 0) - 1)
        figures[executor_id] = [utilization, float(queued)]
    return figures


class LoadReporter:
    """A PUSH socket to the supervisor's ready socket (on the head, always ipc), sends that never block."""

    def __init__(self, context: zmq.Context, supervisor_address: str, scheduler: str) -> None:
        self.scheduler = scheduler
        self.sock = new_socket(context, zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, 16)  # a supervisor that is not reading needs only the newest reports
        self.sock.connect(supervisor_address)
        self.next_due = 0.0
        self.last_sent = 0.0
        self.last_parked = 0  # parked calls the latest report counted
        self.sent = 0

    def send(self, statuses: Mapping[str, tuple[ExecutorStatus, float]], parked: int,
             now: float | None = None, outstanding: Mapping[str, int] | None = None) -> None:
        now = time.monotonic() if now is None else now
        frame = LoadReport(self.scheduler, executor_figures(statuses, now, outstanding), parked).pack()
        try:
            self.sock.send(frame, zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            pass  # the next report says the same, newer
        self.last_sent = now
        self.last_parked = parked
        self.next_due = now + AUTOSCALE_REPORT_INTERVAL_S

    def send_now(self, statuses: Mapping[str, tuple[ExecutorStatus, float]], parked: int) -> None:
        """A call parked while executors may start: report at once, unless a report that already counted
        parked calls left less than 50 ms ago (a burst parking at once sends one report, not one per call)."""
        now = time.monotonic()
        if not self.last_parked or now - self.last_sent >= IMMEDIATE_MIN_INTERVAL_S:
            self.send(statuses, parked, now)

    def close(self) -> None:
        self.sock.close()
