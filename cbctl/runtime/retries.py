"""Calls whose executor died: the scheduler's table of calls in flight, and the executors' filter that keeps
the triggers of two attempts of one call apart. Pure bookkeeping, no sockets (unit-tested on its own).

The contract (README, "When a process dies"):
- A scheduler remembers every call it dispatched (``InFlightTable``) until the caller reports it done (a
  client lists the ids of its finished calls on its next ``CallRequest``) or it ages out. When an executor
  that a remembered call used dies, the call is dispatched again, under the same call id, with its attempt
  number raised, on executors that are alive; after ``CALL_MAX_ATTEMPTS`` dispatches the caller gets
  ``CallLost``. So a function runs at least once (twice if it finished just before the crash), and its
  caller gets one result per call id (a client drops a late duplicate).
- Attempts never mix: a trigger carries its attempt (``ATTEMPT_KEY`` in its extras, only from the second
  on, so a first attempt costs nothing); an executor drops the triggers of an attempt older than one it has
  seen for that call, and the partial joins of the older attempt with them (``AttemptFilter``). The scheduler
  also tells every executor of the older attempt (``CallRetried``), since the new one may place its joins
  elsewhere and nothing else would clear what the older one left waiting there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cbctl.runtime.defaults import CALL_MAX_ATTEMPTS, IN_FLIGHT_LIMIT, IN_FLIGHT_MAX_AGE_S

#: Key of a trigger's extras that holds its attempt number (absent: the first attempt).
ATTEMPT_KEY = "attempt"


@dataclass(slots=True)
class InFlightCall:
    """One dispatched call: what to send again, where it went, and how often it was sent."""

    request: Any  # the CallRequest, kept as it came (a re-dispatch replays it)
    locations: dict[str, str]  # function -> executor address of the latest dispatch
    depth: int  # continuations that led to it (0: a caller's own call)
    attempt: int
    dispatched_at: float


class InFlightTable:
    """Call id -> ``InFlightCall``, oldest dispatch first (a dict keeps insertion order, and a re-dispatch
    re-inserts), so ageing out and the size bound both take from the front."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_age_s: float = IN_FLIGHT_MAX_AGE_S,
                 limit: int = IN_FLIGHT_LIMIT, max_attempts: int = CALL_MAX_ATTEMPTS) -> None:
        self.clock = clock
        self.max_age_s = max_age_s
        self.limit = limit
        self.max_attempts = max_attempts
        self.calls: dict[str, InFlightCall] = {}
        self.forgotten = 0  # calls dropped by age or by the bound, never reported done

    def __contains__(self, call_id: str) -> bool:
        return call_id in self.calls

    def __len__(self) -> int:
        return len(self.calls)

    def add(self, request: Any, locations: dict[str, str], depth: int = 0, attempt: int = 1,
            at: float | None = None) -> None:
        """Remember a dispatch at ``at`` (default: now; a continuation or a re-dispatch replaces the call's
        earlier entry)."""
        calls = self.calls
        call_id = request.call_id
        if call_id in calls:
            del calls[call_id]  # to the back: the order stays by dispatch time
        elif len(calls) >= self.limit:
            del calls[next(iter(calls))]
            self.forgotten += 1
        calls[call_id] = InFlightCall(request, locations, depth, attempt, self.clock() if at is None else at)

    def complete(self, call_ids: Iterable[str]) -> list[InFlightCall]:
        """The caller has these results: nothing more to retry. Returns the calls it remembered of them."""
        pop = self.calls.pop
        done = []
        for call_id in call_ids:
            call = pop(call_id, None)
            if call is not None:
                done.append(call)
        return done

    def expire(self) -> int:
        """Forget calls dispatched longer than ``max_age_s`` ago; returns how many."""
        calls = self.calls
        oldest_kept = self.clock() - self.max_age_s
        expired = 0
        while calls:
            call_id = next(iter(calls))
            if calls[call_id].dispatched_at >= oldest_kept:
                break
            del calls[call_id]
            expired += 1
        self.forgotten += expired
        return expired

    def take_lost(self, address: str) -> list[InFlightCall]:
        """Remove and return the calls whose latest dispatch placed a step at ``address`` (whose executor
        died): each must be dispatched again, or failed once out of attempts (``out_of_attempts``)."""
        lost = [call for call in self.calls.values() if address in call.locations.values()]
        for call in lost:
            del self.calls[call.request.call_id]
        return lost

    def out_of_attempts(self, call: InFlightCall) -> bool:
        return call.attempt >= self.max_attempts


class AttemptFilter:
    """An executor's view of the attempts of calls that were dispatched more than once. Only calls with a
    second attempt are tracked, so the first attempt of every call passes with one falsy check."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.latest: dict[str, tuple[int, float]] = {}  # call id -> (highest attempt seen, when)

    def admit(self, call_id: str, extras: dict[str, Any] | None) -> tuple[bool, bool]:
        """Whether a trigger of ``call_id`` with ``extras`` may run, and whether it starts a newer attempt
        (the caller then drops what it holds of the older one: its partial joins)."""
        attempt = extras.get(ATTEMPT_KEY, 1) if extras else 1
        seen = self.latest.get(call_id) if self.latest else None
        if seen is None:
            if attempt == 1:
                return True, False
            self.latest[call_id] = (attempt, self.clock())
            return True, True
        if attempt < seen[0]:
            return False, False
        if attempt > seen[0]:
            self.latest[call_id] = (attempt, self.clock())
            return True, True
        return True, False

    def expire(self, max_age_s: float) -> None:
        oldest_kept = self.clock() - max_age_s
        for call_id in [c for c, (_, when) in self.latest.items() if when < oldest_kept]:
            del self.latest[call_id]


def with_attempt(extras: dict[str, Any], attempt: int) -> dict[str, Any]:
    """A trigger's extras for ``attempt`` (the first attempt's are left as they are: nothing to carry)."""
    return extras if attempt <= 1 else {**extras, ATTEMPT_KEY: attempt}
