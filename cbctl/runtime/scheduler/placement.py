"""Placement by outstanding work: cbctl's default policy (``cbctl up --policy placement=outstanding``).

Cloudburst's policy (policy.py, ``placement=cloudburst``) places a call on the candidate with the fewest calls
placed in the last 5 s, and learns of load from the utilization in once-a-second statuses. Neither says what an
executor holds *now*: a burst lands two calls on an executor that is still running what it was given while
another sits idle, and a call that waits for another call of the burst (a rendezvous) then waits for ever.
This policy keeps, per executor, its outstanding steps (``ExecutorView.outstanding``):

- set to the executor's own count by every ``ExecutorLoad`` (sent when it turns idle, busy or backlogged,
  rate-limited: never per call) and by every status;
- plus one per step placed there since (``pick_executor``);
- minus one per step of a call this scheduler placed there after that report, once the call's caller reports
  it finished (``calls_finished``: the ids a client lists on its next request, which travel anyway).

A report may cross a placement (the executor counted before the step arrived), so a report counts, on top of
the executor's number, this scheduler's steps placed there after the one the report names as the latest it
received (one scheduler's steps reach an executor in order), or, when it names another scheduler's, those
placed in the last ``LOAD_REPORT_WINDOW_S`` whose calls are not known finished: an executor that just got a
call is never taken for idle by a report sent before it came.

A call goes to an idle candidate when there is one (among idle ones, the one caching most of the keys the call
references; then at random), else to the candidate with the fewest outstanding steps (then locality, then
random). A step that runs after exactly one other step of its call and alongside none (a chain's next function,
``dag.chain_steps``) goes where that step runs, whether the function is pinned there or not (an executor loads a
function on its first call), when that step is all the executor holds: it will be idle when this step can start,
and the step's input is already there, so the call makes no hop between the two (one frame, and one process
wake-up, fewer per call). An executor that holds more is not preferred: under load the step is placed as any
other (the first step's executor may be the only location of a busy first function).
Candidates are Cloudburst's: the function's pinned locations, else every fresh executor of its type, and
``avoid`` for parallel branches; there is no utilization backoff, as outstanding work says more, sooner.
When every location of a pinned function is busy and an executor with nothing pinned is idle, the call goes
there and the function is pinned there at once (``take_actions``), not at the next periodic update. Scale-in,
pin bookkeeping and everything else are Cloudburst's (inherited).

Several schedulers each count only their own placements between reports, so two may both place a call on an
executor they each believe idle. That executor then reports itself backlogged (a step that could run elsewhere
waits), and every scheduler hints idle executors of its type to take one queued call each from it
(``process_load`` returns the hints; so does an executor's report that it turned idle, and the scheduler's
timer, ``rehint``, while one stays backlogged); the executors' side is stealing.py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from cbctl.runtime.defaults import LOAD_REPORT_WINDOW_S
from cbctl.runtime.scheduler.policy import ExecutorView, PinAction, Policy, PolicySettings, host_of
from cbctl.runtime.wire.messages import ExecutorLoad, ExecutorStatus


def new_policy(settings: PolicySettings | None = None, clock: Callable[[], float] = time.monotonic,
               rng: random.Random | None = None, local_host: str = "localhost") -> Policy:
    """The policy ``settings.placement`` names: Cloudburst's (``Policy``) or cbctl's (``OutstandingPolicy``)."""
    settings = settings or PolicySettings()
    cls = Policy if settings.placement == "cloudburst" else OutstandingPolicy
    return cls(settings, clock=clock, rng=rng, local_host=local_host)


class OutstandingPolicy(Policy):
    """Cloudburst's policy with placement by outstanding work (see the module docstring). Not thread-safe."""

    def __init__(self, settings: PolicySettings | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, local_host: str = "localhost") -> None:
        super().__init__(settings, clock=clock, rng=rng, local_host=local_host)
        self.by_address: dict[str, ExecutorView] = {}
        self.steal_hints = 0

    # --- what executors report ---------------------------------------------------------------------------

    def process_status(self, status: ExecutorStatus) -> None:
        super().process_status(status)
        view = self.executors.get((host_of(status.address, self.local_host), status.executor_id))
        if view is None:
            return
        self.by_address[view.address] = view
        # sent between steps, so its queue is everything it holds
        self._reported(view, status.queue_length, self.tick, "")

    def forget_executor(self, view: ExecutorView) -> None:
        super().forget_executor(view)
        if self.by_address.get(view.address) is view:
            del self.by_address[view.address]

    def process_load(self, load: ExecutorLoad) -> list[tuple[ExecutorView, str]]:
        view = self.by_address.get(load.address)
        if view is None or view.pid != load.pid or view.executor_id != load.executor_id:
            return []  # not known yet (its first status makes it known), or an old process's last word
        self._reported(view, load.load, self.clock(), load.last_call)
        view.movable = load.movable
        if load.denied_by:
            # what waits there cannot move (a join, another consistency mode) or was taken: no more hints for
            # it until it reports again, or two executors could ask and be denied for ever
            victim = self.by_address.get(load.denied_by)
            if victim is not None:
                victim.movable = False
        if load.load == 0 and self.settings.work_stealing:  # idle now: the thief for the most backlogged one
            backlogged = [v for v in self.executors.values()
                          if v.movable and v.reported_load >= 2 and v.executor_type == view.executor_type]
            if backlogged:
                victim = max(backlogged, key=lambda v: (v.reported_load, v.key))
                self.steal_hints += 1
                return [(view, victim.address)]
        return self._hints_for(view)

    @staticmethod
    def _reported(view: ExecutorView, load: int, now: float, last_call: str) -> None:
        """An executor's own count arrived: it is what it holds, plus the steps placed there since it received
        the step of ``last_call`` (a scheduler's steps reach an executor in the order they were placed), or,
        when that is not one of this scheduler's, those placed in the last ``LOAD_REPORT_WINDOW_S`` whose calls
        are not known finished (they may have been on their way when it counted: an overcount lasts until their
        caller reports them done, or the next report)."""
        placed = view.placed
        horizon = now - LOAD_REPORT_WINDOW_S
        while placed and placed[0][0] < horizon:
            placed.popleft()
        if load and last_call and last_call in view.finished:
            # sent while that step ran, received after its caller said the call was done: the step is gone
            load -= 1
        if last_call and placed:
            for i, (_, call_id) in enumerate(placed):
                if call_id == last_call:
                    for _ in range(i + 1):
                        placed.popleft()
                    break
        view.outstanding = load + len(placed)
        view.reported_load, view.load_at, view.load_call = load, now, last_call

    def rehint(self) -> list[tuple[ExecutorView, str]]:
        """Hints again for executors whose latest own report says backlogged (the scheduler's timer): the
        executors hinted before may have found nothing (another took it) or been busy, and a backlogged
        executor reports again only when its state changes."""
        hints = []
        for view in self.executors.values():
            if view.movable:
                hints += self._hints_for(view)
        return hints

    def _hints_for(self, view: ExecutorView) -> list[tuple[ExecutorView, str]]:
        if not view.movable or view.reported_load < 2 or not self.settings.work_stealing:
            return []
        now = self.clock()
        # in a fixed order, so two schedulers hearing the same report hint the same executor (it asks once)
        idle = sorted((v for v in self.executors.values()
                       if v.outstanding == 0 and v is not view and v.executor_type == view.executor_type
                       and now - v.last_seen <= self.settings.stale_s), key=lambda v: v.key)
        hints = []
        # a thief per step waiting behind the running one, and two more: a thief this scheduler believes idle
        # may be busy already (it then ignores the hint), and one that finds nothing reports itself idle and is
        # hinted to the next backlogged executor. A thief is not counted busy until it says so (a count would
        # go stale if it found nothing); it asks once however many hints it gets.
        for thief in idle[:view.reported_load + 1]:
            hints.append((thief, view.address))
        self.steal_hints += len(hints)
        return hints

    def calls_finished(self, calls: Iterable[Any]) -> None:
        by_address = self.by_address
        for call in calls:
            dispatched_at = call.dispatched_at
            for address in call.locations.values():
                view = by_address.get(address)
                if view is None:
                    continue
                view.finished.append(call.request.call_id)
                placed = view.placed
                entry = (dispatched_at, call.request.call_id)
                if placed and dispatched_at >= placed[0][0] and entry in placed:
                    placed.remove(entry)  # counted on top of any report since
                elif call.request.call_id == view.load_call and view.reported_load:
                    # the step the latest report was sent for (busy, before it ran), so it counted it: without
                    # this, an executor whose next report the rate limit folds would look busy until then
                    view.load_call = ""
                    view.reported_load -= 1
                elif dispatched_at <= view.load_at:
                    continue  # in the executor's latest report (or finished before it)
                if view.outstanding:
                    view.outstanding -= 1

    def call_moved(self, source: str, to: str) -> None:
        view = self.by_address.get(source)
        if view is not None and view.outstanding:
            view.outstanding -= 1  # the thief's own report counts it there

    def take_actions(self) -> list[PinAction]:
        actions, self.actions = self.actions, []
        return actions

    # --- calls (the hot path) ----------------------------------------------------------------------------

    def pick_executor(self, function: str, gpu: bool = False, refs: list[str] | None = None,
                      avoid: Collection[str] = (), now: float = 0.0, call_id: str = "",
                      after: str = "") -> ExecutorView:
        candidates = self._candidates[gpu].get(function)
        if candidates is None:
            candidates = self._build_candidates(function, gpu)
        chosen = None
        if after:  # a chain's step: where its input is made, if that executor holds only the step before
            view = self.by_address.get(after)
            if (view is not None and view.outstanding == 1 and view.executor_type == ("gpu" if gpu else "cpu")
                    and (function, view.key) not in self.refused):
                chosen = view
        if chosen is None:
            chosen = candidates[0] if len(candidates) == 1 else self._choose(candidates, refs, avoid)
            if chosen.outstanding and self.unpinned_executors.get(chosen.executor_type) and self.settings.scale_out:
                chosen = self._scale_out_now(function, chosen, avoid) or chosen
        chosen.outstanding += 1
        placed = chosen.placed
        placed.append((now, call_id))
        if len(placed) > 64 and placed[0][0] < now - LOAD_REPORT_WINDOW_S:  # bounded between reports
            placed.popleft()
        return chosen

    def _build_candidates(self, function: str, gpu: bool) -> tuple[ExecutorView, ...]:
        """Cloudburst's candidates without the utilization backoff."""
        candidates = tuple(sorted(self._candidate_pool(function, gpu)[0], key=lambda v: v.key))
        self._candidates[gpu][function] = candidates
        return candidates

    def _choose(self, candidates: tuple[ExecutorView, ...], refs: list[str] | None,
                avoid: Collection[str]) -> ExecutorView:
        pool: Collection[ExecutorView] = candidates
        if avoid:
            pool = [v for v in candidates if v.address not in avoid] or candidates
        holders = None
        if refs and self.settings.locality and self.key_locations:
            holders = [h for h in map(self.key_locations.get, refs) if h]
        scale = len(refs) + 1 if holders else 1
        chosen, best, ties = None, 0, 0
        for view in pool:  # the lowest rank; among equals, each equally likely (reservoir sampling)
            rank = view.outstanding * scale  # outstanding first, then the most cached keys
            if holders:
                key = view.key
                for held in holders:
                    if key in held:
                        rank -= 1
            if chosen is None or rank < best:
                chosen, best, ties = view, rank, 1
            elif rank == best:
                ties += 1
                if self.rng.random() * ties < 1.0:
                    chosen = view
        assert chosen is not None  # candidates are never empty
        return chosen

    def _scale_out_now(self, function: str, busy: ExecutorView, avoid: Collection[str]) -> ExecutorView | None:
        """``busy`` is the least loaded location of ``function``; if the function is pinned (so every location
        is busy) and an executor with nothing pinned is idle, pin it there and return that executor."""
        locations = self.function_locations.get(function)
        if not locations or busy.key not in locations:
            return None  # not pinned: ``busy`` was the least loaded of every executor of its type
        now = self.clock()
        spares = sorted((v for v in map(self.executors.get, self.unpinned_executors.get(busy.executor_type, ()))
                         if v is not None and not v.outstanding and v.address not in avoid
                         and (function, v.key) not in self.refused and now - v.last_seen <= self.settings.stale_s),
                        key=lambda v: v.key)
        if not spares:
            return None
        spare = self.rng.choice(spares)
        self.actions.append(self._request_pin(function, spare))
        return spare

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described["steal_hints"] = self.steal_hints
        # utilization backoff still times scale-in, but no call avoids an executor for it (`cbctl top` shows
        # "backoff" for executors the policy avoids)
        described["backoff"] = {}
        for view in self.executors.values():
            executor = described["executors"][view.executor_id]
            executor["backoff"] = False
            executor["reported_load"], executor["movable"] = view.reported_load, view.movable
        return described
