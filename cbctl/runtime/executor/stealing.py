"""An executor's side of placement by outstanding work (placement.py): when to report its load, and which
queued step it may hand to an idle peer (work stealing). Pure logic; the executor sends the messages.

Load reports: an executor sends ``ExecutorLoad`` to every scheduler when it turns idle (holds no step), busy
(runs one) or backlogged (a step that could run on another executor waits behind the running one), never per
call, and at most once per ``LOAD_REPORT_MIN_INTERVAL_S`` on average (a burst of ``LOAD_REPORT_BURST`` goes at
once): flips beyond that are folded into one report of the state when the next is allowed (``LoadEdges``). A
step runs on the executor's one thread, so while user code runs nothing is reported, except from ``cb.get``,
``cb.recv`` and the like (``Executor.serve_while_busy``), which is where a call that waits for another call
spends its time.

Work stealing: a scheduler that hears an executor is backlogged hints idle executors (``StealHint``); each that
is still idle asks the backlogged one (``StealRequest``), which hands over its newest queued step that can run
anywhere (``stealable``) and tells the schedulers (``CallMoved``, so a retry after the thief dies goes to the
right place). The victim answers between steps, or from within a step that waits in ``cb.get`` and the like,
which is exactly when a call waits for one queued behind it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from cbctl.errors import ProtocolError
from cbctl.runtime import multiexec
from cbctl.runtime.defaults import LOAD_REPORT_BURST, LOAD_REPORT_MIN_INTERVAL_S, STEAL_WAIT_S
from cbctl.runtime.wire.messages import (
    CallMoved,
    DagTrigger,
    ExecutorLoad,
    NothingToSteal,
    StealHint,
    StealRequest,
    unpack,
)

log = logging.getLogger(__name__)

#: Load states a report is sent on a change between: idle, busy (running a step, perhaps with others waiting
#: that must run here), backlogged (a step that could run on another executor waits behind the running one).
IDLE, BUSY, BACKLOGGED = 0, 1, 2


class LoadEdges:
    """Decides when an executor reports its load: on a change of state, rate-limited (module docstring)."""

    def __init__(self, min_interval_s: float = LOAD_REPORT_MIN_INTERVAL_S, burst: int = LOAD_REPORT_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval_s = min_interval_s
        self.burst = burst
        self.clock = clock
        self.sent_state = IDLE  # what the schedulers last heard (an executor starts idle)
        self.sent_call = ""  # and the latest call it had received then
        self.tokens = float(burst)  # a token bucket: ``burst`` reports at once, then one per interval
        self.filled_at = clock()
        self.pending = False  # a change that found no token, to report when one comes
        self.sent = 0

    def observe(self, load: int, movable: bool, last_call: str = "", force: bool = False) -> bool:
        """The executor holds ``load`` steps now, ``movable`` says whether one that waits could run on another
        executor, ``last_call`` is the call of the latest step it received; True when it must report that now
        (always if ``force``). Idle again after calls the schedulers have not heard of is news too: a scheduler
        counts a call it placed as outstanding until a report names it (or its caller says it is done)."""
        state = IDLE if not load else BACKLOGGED if movable else BUSY
        if state == self.sent_state and (state != IDLE or last_call == self.sent_call) and not force:
            self.pending = False
            return False
        # the token bucket refilled (inline: a sequential call's steps flip busy and idle, and each flip comes here)
        now = self.clock()
        tokens = self.tokens + (now - self.filled_at) / self.min_interval_s
        self.tokens = tokens if tokens < self.burst else float(self.burst)
        self.filled_at = now
        if self.tokens < 1.0 and not force:
            self.pending = True
            return False
        self.tokens = max(0.0, self.tokens - 1.0)
        self.sent_state, self.sent_call, self.pending = state, last_call, False
        self.sent += 1
        return True

    def not_backlogged(self) -> None:
        """A thief was told nothing here can move; the schedulers hear it from the thief, so they count this
        executor busy, not backlogged, until it reports again."""
        if self.sent_state == BACKLOGGED:
            self.sent_state = BUSY

    def wait_ms(self, longest_ms: int) -> int:
        """How long the executor's loop may block before a folded change is due (``longest_ms`` if none): one
        interval, not the exact time to the next token, so the receive timeout takes two values only (setting
        it costs a call per loop pass when it changes), and a folded change goes at most one interval late."""
        if not self.pending:
            return longest_ms
        return min(longest_ms, int(self.min_interval_s * 1000) + 1)


def stealable(trigger: DagTrigger, inputs: list[DagTrigger], batching: bool) -> bool:
    """Whether a queued step can run on another executor as it is: one trigger of a function with at most one
    upstream (a join's inputs stay where they meet: the schedule sends its other triggers here, so one moved
    alone would wait for them for ever, and so would its call), last-writer-wins consistency (the other modes
    keep per-call state on the executors that ran it), not a multi-exec step (its gathering state is here), and
    not of a batching function (batches gather here)."""
    if len(inputs) != 1 or trigger.consistency != "lww" or batching:
        return False
    if trigger.extras and multiexec.EXTRAS_KEY in trigger.extras:
        return False
    function = trigger.function
    upstreams = 0
    for edge in trigger.edges:
        if edge[1] == function:
            upstreams += 1
            if upstreams > 1:
                return False
    return True


class WorkSharing:
    """One executor's load reports and work stealing. The executor calls ``observe`` before and after every
    step (and from ``serve_while_busy``), ``deferred`` for each trigger it puts aside while a step runs, and
    hands over the steal messages. Only the executor's thread touches it.

    ``executor`` is the ``Executor`` (executor.py imports this module, hence no annotation): its ready queue,
    deferred frames, loaded functions, sockets and identity are read here."""

    def __init__(self, executor: Any, load_reports: bool) -> None:
        self.executor = executor
        self.edges = LoadEdges() if load_reports else None
        self.deferred_triggers = 0  # DagTriggers among the executor's ``deferred`` frames: held besides ``ready``
        self.deferred_movable = 0  # those of them another executor could run
        self.asked_until = 0.0  # a thief waits this long for the call it asked for before heeding other hints
        self.last_call = ""  # the call of the latest step received (load reports name it)
        self._one_step_of: str | None = None  # last_call when ``observe`` last saw one step held (else None)
        self.counts = {"given": 0, "asked": 0, "hints_ignored": 0}

    def metrics(self) -> dict[str, int]:
        return dict(self.counts, load_reports=self.edges.sent if self.edges else 0)

    def deferred(self, trigger: DagTrigger) -> None:
        """A trigger arrived while a step runs and waits in ``deferred`` (``serve_while_busy``)."""
        self.deferred_triggers += 1
        if self.may_hand_over(trigger, [trigger]):
            self.deferred_movable += 1

    def observe(self, running: int, force: bool = False, denied_by: str = "") -> None:
        """Report the steps held (``running``: 1 from within a step, 0 between steps) to every scheduler if the
        executor turned idle, busy or backlogged (a step another executor could run waits) and the rate limit
        allows (else when it does), or at once if ``force``."""
        edges = self.edges
        if edges is None:
            return
        ready = self.executor.ready
        load = running + len(ready) + self.deferred_triggers
        if load == 1 and self._one_step_of == self.last_call and not (edges.pending or force or self.deferred_movable):
            # one step held, of the call held at the last look too (between a chain's steps run here): the
            # same state, and nothing folded, so LoadEdges would say there is nothing to send
            return
        self._one_step_of = self.last_call if load == 1 else None
        movable = self.deferred_movable > 0
        if load >= 2 and not movable:  # between steps ready[0] runs next; the newest few are enough to look at
            for i in range(len(ready) - 1, max(1 - running, len(ready) - 8) - 1, -1):
                if self.may_hand_over(*ready[i]):
                    movable = True
                    break
        if edges.observe(load, movable, self.last_call, force):
            executor = self.executor
            self._to_schedulers(ExecutorLoad(executor.executor_id, executor.address, os.getpid(), load, movable,
                                             self.last_call, denied_by).pack())

    def on_hint(self, hint: StealHint) -> None:
        """A scheduler says ``hint.victim`` has a call waiting that could run here: ask for it, if this executor
        is idle (hints are handled between steps only, so nothing runs now) and not waiting for one already."""
        executor = self.executor
        now = time.monotonic()
        if now < self.asked_until or executor.departure.leaving:
            self.counts["hints_ignored"] += 1  # a call asked for is on its way
            return
        if executor.ready or executor.deferred:
            self.counts["hints_ignored"] += 1
            self.observe(0, force=True)  # the scheduler that hinted counts this executor idle: it is not
            return
        self.asked_until = now + STEAL_WAIT_S
        self.counts["asked"] += 1
        executor.peers.send(hint.victim, StealRequest(executor.address, executor.executor_type).pack())

    def hand_over_queued(self, request: StealRequest, keep: int) -> None:
        """Give ``request.thief`` the newest waiting step that can run anywhere (it would wait longest here),
        past the first ``keep`` of the ready queue, and tell the schedulers where it went; else tell the thief
        there is none."""
        executor = self.executor
        if request.executor_type != executor.executor_type or request.thief == executor.address:
            return
        deferred = executor.deferred
        for i in range(len(deferred) - 1, -1, -1):  # arrived during the running step: the newest
            frame = deferred[i]
            try:
                trigger = unpack(frame)
            except ProtocolError:
                continue
            if type(trigger) is DagTrigger and self.may_hand_over(trigger, [trigger]):
                del deferred[i]
                self.deferred_triggers -= 1
                self.deferred_movable -= 1
                self._hand_over(trigger, frame, request.thief)
                return
        ready = executor.ready
        for i in range(len(ready) - 1, keep - 1, -1):
            trigger, inputs = ready[i]
            if self.may_hand_over(trigger, inputs):
                del ready[i]
                self._hand_over(trigger, trigger.pack(), request.thief)
                return
        executor.peers.send(request.thief, NothingToSteal(executor.address).pack())
        if self.edges is not None:  # the thief tells the schedulers; they stop hinting until told again
            self.edges.not_backlogged()

    def on_nothing_to_steal(self, message: NothingToSteal) -> None:
        """Nothing could be taken: the schedulers that hinted this executor count it busy until told, and
        hint others to the victim until told it has nothing to give."""
        self.asked_until = 0.0
        self.observe(0, force=True, denied_by=message.victim)

    def may_hand_over(self, trigger: DagTrigger, inputs: list[DagTrigger]) -> bool:
        loaded = self.executor.functions.get(trigger.function)
        return stealable(trigger, inputs, loaded is not None and loaded.record.batching)

    def _hand_over(self, trigger: DagTrigger, frame: bytes | list[Any], thief: str) -> None:
        executor = self.executor
        log.debug("call %s: step %s handed to %s", trigger.call_id, trigger.function, thief)
        executor.peers.send(thief, frame)
        self._to_schedulers(CallMoved(trigger.call_id, trigger.function, executor.address, thief).pack())
        self.counts["given"] += 1

    def _to_schedulers(self, frame: bytes) -> None:
        """On the status reporter's DEALERs: ordered after this executor's earlier statuses."""
        executor = self.executor
        for sock in executor.scheduler_sockets:
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                executor.peers.dropped += 1
