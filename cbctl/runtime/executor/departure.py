"""Graceful executor departure: how an executor leaves without losing a call in flight, and how the other
executors route around one that leaves. Used by the executor's loop; no sockets here, only decisions.

An executor leaves on SIGTERM from the supervisor (``cbctl scale`` down, or ``cbctl down``):

1. it refuses new pins and announces it is leaving: a status with ``running=False`` to every scheduler, and
   ``ExecutorLeaving`` (naming an heir: the lowest-numbered other executor of its type) to every executor in
   the cluster file;
2. a scheduler drops it from its policy, so no call placed from then on goes there, and answers with
   ``LeavingAck``; another executor redirects every later trigger meant for it to the heir (the heir runs
   the step, loading the function if it must) and answers with ``LeavingAck``. Each answer travels on the
   socket that carried that peer's earlier triggers to the leaving executor, and zmq keeps one socket's
   messages in order, so when the answer arrives, every trigger that peer sent before it has arrived too;
3. meanwhile it runs everything it was sent. Once every peer has answered (or has exited, or a deadline
   passed: a dead peer cannot answer) and its queue is empty, it hands the DAG steps still waiting for some
   of their inputs to the heir (whose later inputs are redirected there as well) and exits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cbctl.runtime.defaults import DEPARTURE_ACK_TIMEOUT_S
from cbctl.runtime.wire.messages import ExecutorLeaving, LeavingAck

#: Most redirects followed for one send (an heir that left too has an heir of its own).
MAX_REDIRECT_HOPS = 8


@dataclass(frozen=True)
class Peer:
    """Another process that may send this executor triggers, and that must acknowledge its departure."""

    address: str
    pid: int = 0  # 0: not known, so only its answer or the deadline releases the wait
    index: int = -1
    executor_type: str = ""


def choose_heir(me: str, executor_type: str, peers: Iterable[Peer]) -> str:
    """The address of the lowest-numbered other executor of ``executor_type`` ('' if there is none).
    ``cbctl scale`` departs the highest-numbered executors, so the heir is one that stays."""
    same = sorted((p.index, p.address) for p in peers
                  if p.index >= 0 and p.executor_type == executor_type and p.address != me)
    return same[0][1] if same else ""


@dataclass
class Departure:
    """This executor's side of departures: its own (``begin`` ... ``may_exit``) and its peers' (``route``)."""

    executor_id: str
    address: str
    clock: Callable[[], float] = time.monotonic
    leaving: bool = False
    heir: str = ""
    awaiting: dict[str, Peer] = field(default_factory=dict)  # address -> peer that has not answered yet
    deadline: float = 0.0
    redirects: dict[str, str] = field(default_factory=dict)  # address of a departed peer -> its heir

    def begin(self, executors: Iterable[Peer], schedulers: Iterable[Peer], executor_type: str,
              timeout_s: float = DEPARTURE_ACK_TIMEOUT_S) -> tuple[list[str], bytes]:
        """Start leaving; returns the executor addresses to tell and the ``ExecutorLeaving`` frame."""
        executors = [p for p in executors if p.address != self.address]
        self.leaving = True
        self.heir = choose_heir(self.address, executor_type, executors)
        self.awaiting = {p.address: p for p in [*executors, *schedulers]}
        self.deadline = self.clock() + timeout_s
        frame = ExecutorLeaving(self.executor_id, self.address, self.heir).pack()
        return [p.address for p in executors], frame

    def on_peer_leaving(self, message: ExecutorLeaving) -> bytes:
        """Another executor leaves: route its work to its heir from now on; returns the ``LeavingAck``
        to send to it (on the socket used for triggers, which is what orders it after them)."""
        if message.address != self.address:
            self.redirects[message.address] = message.heir_address or message.address
        return LeavingAck(self.address).pack()

    def on_ack(self, message: LeavingAck) -> None:
        self.awaiting.pop(message.sender, None)

    def forget_exited(self, alive: Callable[[int], bool]) -> None:
        """Stop waiting for peers whose process is gone: whatever they sent has been delivered or is lost
        with them, and they will send nothing more."""
        for address in [a for a, p in self.awaiting.items() if p.pid and not alive(p.pid)]:
            del self.awaiting[address]

    def may_exit(self) -> bool:
        """Every peer answered (or exited), or the deadline passed."""
        return self.leaving and (not self.awaiting or self.clock() >= self.deadline)

    def route(self, address: str) -> str:
        """Where a trigger for ``address`` goes: its heir's address if it left (following heirs that left
        too), else itself. Callers check ``redirects`` first, so this costs nothing while nobody leaves."""
        for _ in range(MAX_REDIRECT_HOPS):
            heir = self.redirects.get(address)
            if heir is None or heir == address:
                return address
            address = heir
        return address
