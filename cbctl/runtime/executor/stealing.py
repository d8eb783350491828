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

import time
from collections.abc import Callable

from cbctl.runtime import multiexec
from cbctl.runtime.defaults import LOAD_REPORT_BURST, LOAD_REPORT_MIN_INTERVAL_S
from cbctl.runtime.wire.messages import DagTrigger

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
        self.tokens = float(burst)  # a token bucket: ``burst`` reports at once, then one per interval
        self.filled_at = clock()
        self.pending = False  # a change that found no token, to report when one comes
        self.sent = 0

    def observe(self, load: int, movable: bool, force: bool = False) -> bool:
        """The executor holds ``load`` steps now, and ``movable`` says whether one that waits could run on
        another executor; True when it must report that now (always if ``force``)."""
        state = IDLE if not load else BACKLOGGED if movable else BUSY
        if state == self.sent_state and not force:
            self.pending = False
            return False
        self._refill()
        if self.tokens < 1.0 and not force:
            self.pending = True
            return False
        self.tokens = max(0.0, self.tokens - 1.0)
        self.sent_state, self.pending = state, False
        self.sent += 1
        return True

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.filled_at) / self.min_interval_s)
        self.filled_at = now

    def not_backlogged(self) -> None:
        """A thief was told nothing here can move; the schedulers hear it from the thief, so they count this
        executor busy, not backlogged, until it reports again."""
        if self.sent_state == BACKLOGGED:
            self.sent_state = BUSY

    def wait_ms(self, longest_ms: int) -> int:
        """How long the executor's loop may block before a folded change is due (``longest_ms`` if none)."""
        if not self.pending:
            return longest_ms
        self._refill()
        due_ms = (1.0 - self.tokens) * self.min_interval_s * 1000
        return max(0, min(longest_ms, int(due_ms) + 1))


def stealable(trigger: DagTrigger, inputs: list[DagTrigger], batching: bool) -> bool:
    """Whether a queued step can run on another executor as it is: one trigger (a join's inputs stay where they
    met), last-writer-wins consistency (the other modes keep per-call state on the executors that ran it), not a
    multi-exec step (its gathering state is here), and not of a batching function (batches gather here)."""
    return (len(inputs) == 1 and trigger.consistency == "lww" and not batching
            and not (trigger.extras and multiexec.EXTRAS_KEY in trigger.extras))
