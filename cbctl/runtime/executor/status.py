"""The executor's status reports: sent to every scheduler on a timer from the executor's own loop, and once
at start with a handshake (``cbctl up`` returns only when every scheduler can place work here).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq

from cbctl.runtime.defaults import STATUS_INTERVAL_S
from cbctl.runtime.process import drain, new_socket
from cbctl.runtime.wire import auth
from cbctl.runtime.wire.messages import ExecutorStatus, StatusAck, unpack


class StatusReporter:
    """Sends the executor's status to every scheduler on a timer (from the executor's own loop)."""

    def __init__(self, context: zmq.Context, status: Callable[[bool], ExecutorStatus],
                 scheduler_addresses: list[str]) -> None:
        self.status = status  # the executor's status(running), which ends its metrics interval
        self.sockets = []
        for address in scheduler_addresses:
            sock = new_socket(context, zmq.DEALER)
            auth.connect(sock, address)
            self.sockets.append(sock)
        self.last_report = time.monotonic()

    def report(self, running: bool = True) -> None:
        self.last_report = time.monotonic()
        frame = self.status(running).pack()
        for sock in self.sockets:
            drain(sock)  # acks of earlier reports
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                pass

    def due(self) -> bool:
        return time.monotonic() - self.last_report >= STATUS_INTERVAL_S

    def handshake(self, timeout_s: float = 30.0) -> None:
        """Report once and wait until every scheduler acknowledged, so ``cbctl up`` returns only when
        every scheduler can place work here."""
        deadline = time.monotonic() + timeout_s
        self.report()
        for sock in self.sockets:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("a scheduler did not acknowledge this executor's status")
                if sock.poll(min(1000, int(remaining * 1000) + 1)):
                    if isinstance(unpack(sock.recv()), StatusAck):
                        break
                else:
                    self.report()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
