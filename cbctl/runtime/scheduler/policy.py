"""Which executor runs what: Cloudburst's default scheduling policy as one pure object.

A scheduler feeds its ``Policy`` every executor status (``process_status``) and a timer (``periodic_update``),
tells it which functions must stay pinned (``set_wanted``: the functions of registered DAGs) and asks it where
each call of a function runs (``pick_executor``, the hot path). The policy owns no socket and reads no clock
or randomness but the ones it is given, so every decision is unit-tested without processes; what it decides to
pin or unpin comes back as ``PinAction`` values, which the scheduler turns into PinRequest/UnpinRequest
messages, and the executors' answers come back through ``pin_result``.

State, with Cloudburst's names:

- ``thread_statuses``: the latest status per executor, keyed by ``(host, executor_id)``;
- ``function_locations``: function -> executors where it is pinned;
- ``unpinned_executors``: per type ("cpu", "gpu"), the executors with nothing pinned (or being pinned);
- ``backoff``: executors avoided for a while because they reported utilization above the threshold, with
  the time of their last hot status;
- ``running_counts``: executor -> start times of the calls placed there recently (at the resolution of the
  policy's tick, the time of the latest status or update: well within the seconds-long window, and it saves
  a clock read per call);
- ``key_locations``: store key -> executors whose caches hold it. Cloudburst keys this by host because its
  cache is shared by a VM's executor threads; cbctl's cache lives in each executor process, so a cache's
  location is the executor itself, ``(host, executor_id)``.

Placement of a call: among the function's locations (every live executor of its type when it is pinned
nowhere, as for a function called on its own), skip those in backoff unless all are, prefer the ones whose
caches hold the most of the call's referenced keys, then the fewest recent calls, then random. When every
location is in backoff and an unpinned executor exists, the next update pins the function there too (scale
out); once all its locations have been calm for a while, the newest extra pin is dropped (scale in, never
below one).

Long on purpose: ``Policy`` is one pure state machine, tested as one; its settings come first in the file.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cbctl.errors import InvalidArgument, NoExecutorAvailable
from cbctl.runtime import defaults
from cbctl.runtime.wire.messages import ExecutorLoad, ExecutorStatus

ExecutorKey = tuple[str, str]  # (host, executor_id)
TYPES = ("cpu", "gpu")


@dataclass(frozen=True)
class PolicySettings:
    """The policy's tunables (documented in ``defaults``); ``cbctl up --policy KEY=VALUE`` sets them."""

    backoff_utilization: float = defaults.POLICY_BACKOFF_UTILIZATION
    backoff_window_s: float = defaults.POLICY_BACKOFF_WINDOW_S
    call_window_s: float = defaults.POLICY_CALL_WINDOW_S
    scale_in_utilization: float = defaults.POLICY_SCALE_IN_UTILIZATION
    scale_in_calm_s: float = defaults.POLICY_SCALE_IN_CALM_S
    update_interval_s: float = defaults.POLICY_UPDATE_INTERVAL_S
    pin_timeout_s: float = defaults.POLICY_PIN_TIMEOUT_S
    pin_retry_s: float = defaults.POLICY_PIN_RETRY_S
    stale_s: float = defaults.POLICY_STALE_S
    silence_s: float = defaults.POLICY_SILENCE_S
    start_grace_s: float = defaults.POLICY_START_GRACE_S
    locality: bool = True  # prefer executors caching a call's referenced keys (off: a baseline to compare)
    scale_out: bool = True  # pin hot functions on more executors, and unpin them when load falls
    placement: str = defaults.POLICY_PLACEMENT  # "outstanding" (placement.py) or "cloudburst" (this module)
    work_stealing: bool = True  # "outstanding" only: idle executors take calls queued on backlogged ones

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PolicySettings:
        """Settings from ``{name: value}``, values given as their type or as command-line strings."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, raw in options.items():
            if name not in known:
                raise InvalidArgument(f"unknown policy setting {name!r}: use one of {', '.join(sorted(known))}")
            values[name] = _parse_setting(name, raw, known[name].default)
        return cls(**values)


def _parse_setting(name: str, raw: Any, default: Any) -> Any:
    if isinstance(default, str):
        text = str(raw).strip().lower()
        if text not in defaults.POLICY_PLACEMENTS:
            raise InvalidArgument(f"policy setting {name} must be one of {', '.join(defaults.POLICY_PLACEMENTS)}, "
                                  f"not {raw!r}")
        return text
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise InvalidArgument(f"policy setting {name} must be true or false, not {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InvalidArgument(f"policy setting {name} must be a number, not {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise InvalidArgument(f"policy setting {name} must be a finite number >= 0, not {raw!r}")
    return value


def parse_policy_options(items: Iterable[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` from the command line -> validated ``{KEY: value}``."""
    options: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidArgument(f"--policy {item!r} must look like KEY=VALUE, e.g. backoff_window_s=2")
        options[name.strip()] = value.strip()
    settings = PolicySettings.from_options(options)
    return {name: getattr(settings, name) for name in options}


@dataclass(frozen=True)
class PinAction:
    """A decision for the scheduler to send: pin (or unpin) ``function`` on the executor at ``address``."""

    function: str
    executor_id: str
    address: str
    pin: bool = True


@dataclass(eq=False)
class ExecutorView:
    """What the policy knows of one executor; ``pinned`` is what it counts as the executor's pins: those it
    reports, plus pins it confirmed since, minus pins being removed."""

    key: ExecutorKey
    address: str
    executor_type: str
    pid: int = 0
    status: ExecutorStatus | None = None
    last_seen: float = 0.0
    pinned: set[str] = field(default_factory=set)
    pinning: set[str] = field(default_factory=set)  # pin requested, not answered yet
    unpinning: set[str] = field(default_factory=set)  # unpin sent, executor still reports it
    reported: frozenset[str] = frozenset()
    recent_calls: collections.deque[float] = field(default_factory=collections.deque)
    # placement="outstanding" only (placement.py): steps held there (its latest load report or status, plus
    # the steps placed there since, less those known finished since), and when that report came
    outstanding: int = 0
    load_at: float = 0.0
    reported_load: int = 0  # the executor's own count in that report
    load_call: str = ""  # the call of the latest step it had received then
    placed: collections.deque[tuple[float, str]] = field(default_factory=collections.deque)  # (time, call id)
    movable: bool = False  # its latest load report says a waiting step could run elsewhere (a thief's hint)
    # calls with a step here that their callers reported finished, latest last: a load report sent before one
    # ended but received after counted a step that is gone
    finished: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=16))

    @property
    def host(self) -> str:
        return self.key[0]

    @property
    def executor_id(self) -> str:
        return self.key[1]

    @property
    def utilization(self) -> float:
        return self.status.utilization if self.status is not None else 0.0

    @property
    def queue_length(self) -> int:
        return self.status.queue_length if self.status is not None else 0


def host_of(address: str, local_host: str) -> str:
    """The machine an executor runs on, from its address: the host of a tcp:// address; ipc:// sockets only
    work between processes of one machine, so theirs is the scheduler's own."""
    if address.startswith("tcp://"):
        return address[len("tcp://"):].rsplit(":", 1)[0]
    return local_host


class Policy:
    """Cloudburst's default policy (see the module docstring). Not thread-safe: one scheduler loop owns it."""

    def __init__(self, settings: PolicySettings | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, local_host: str = "localhost") -> None:
        self.settings = settings or PolicySettings()
        self.clock = clock
        self.rng = rng or random.Random()
        self.local_host = local_host
        self.started = self.tick = clock()
        self.executors: dict[ExecutorKey, ExecutorView] = {}
        self.thread_statuses: dict[ExecutorKey, ExecutorStatus] = {}
        self.function_locations: dict[str, set[ExecutorKey]] = {}
        self.unpinned_executors: dict[str, set[ExecutorKey]] = {t: set() for t in TYPES}
        self.backoff: dict[ExecutorKey, float] = {}
        self.running_counts: dict[ExecutorKey, collections.deque[float]] = {}
        self.key_locations: dict[str, set[ExecutorKey]] = {}
        self._published: dict[ExecutorKey, list[str]] = {}  # each executor's cached keys in key_locations
        self.updates = 0  # periodic updates run (a test waits for one after a status it sent)
        self.wanted: dict[str, bool] = {}  # functions that must stay pinned somewhere -> gpu
        self.wanted_since: dict[str, float] = {}
        self.pending_pins: dict[tuple[str, ExecutorKey], float] = {}
        self.pinned_at: dict[tuple[str, ExecutorKey], float] = {}
        self.refused: dict[tuple[str, ExecutorKey], float] = {}
        self.overloaded: set[str] = set()  # pinned functions whose every location was in backoff at a pick
        self.calm_since: dict[str, float] = {}
        self.actions: list[PinAction] = []  # pins decided while placing a call (never by Cloudburst's policy)
        # per gpu flag: function -> candidate executors, rebuilt after any change that could alter them
        self._candidates: tuple[dict[str, tuple[ExecutorView, ...]], dict[str, tuple[ExecutorView, ...]]] = ({}, {})

    @property
    def unpinned_cpu_executors(self) -> set[ExecutorKey]:
        return self.unpinned_executors["cpu"]

    @property
    def unpinned_gpu_executors(self) -> set[ExecutorKey]:
        return self.unpinned_executors["gpu"]

    # --- statuses ----------------------------------------------------------------------------------------

    def process_status(self, status: ExecutorStatus) -> None:
        """Record one executor status: a leaving executor vanishes, a restarted one loses its pins, a hot
        one goes into backoff."""
        key = (host_of(status.address, self.local_host), status.executor_id)
        view = self.executors.get(key)
        if not status.running:
            if view is not None:
                self.forget_executor(view)
            return
        now = self.tick = self.clock()
        reported = frozenset(status.pinned)
        if view is None:
            view = self.executors[key] = ExecutorView(key, status.address, status.executor_type, status.pid)
            self.running_counts[key] = view.recent_calls
            self._invalidate()
        elif status.pid != view.pid or (not reported and view.reported - view.unpinning):
            self._drop_pins(view)  # restarted: a new process holds nothing the old one had pinned
            view.pid = status.pid
        elif now - view.last_seen > self.settings.stale_s:
            self._invalidate()  # a stale executor is fresh again
        view.address, view.executor_type, view.status, view.last_seen = (
            status.address, status.executor_type, status, now)
        self.thread_statuses[key] = status
        view.reported = reported
        view.unpinning &= reported  # an unpin is done once the executor stops reporting the function
        view.pinning -= reported
        target = reported - view.unpinning
        for function in view.pinned - target:
            self._remove_location(function, view)
        for function in target - view.pinned:
            self._add_location(function, view)
        self._refresh_unpinned(view)
        if status.utilization > self.settings.backoff_utilization:
            if key not in self.backoff:
                self._invalidate()
            self.backoff[key] = now

    def forget_executor(self, view: ExecutorView) -> None:
        """Remove an executor from every structure (it is leaving, or went silent for good)."""
        key = view.key
        self._drop_pins(view)
        self.executors.pop(key, None)
        self.thread_statuses.pop(key, None)
        self.running_counts.pop(key, None)
        self.backoff.pop(key, None)
        for unpinned in self.unpinned_executors.values():
            unpinned.discard(key)
        self._set_cached_keys(key, [])
        self._published.pop(key, None)
        self._invalidate()

    def forget_lost(self, executor_id: str, pid: int) -> bool:
        """An executor's process ``pid`` died: place nothing there until its restarted process reports (a
        status with another pid makes it known again). False when that process was not the one known."""
        view = self._by_id(executor_id)
        if view is None or view.pid != pid:
            return False
        self.forget_executor(view)
        return True

    def _drop_pins(self, view: ExecutorView) -> None:
        for function in list(view.pinned):
            self._remove_location(function, view)
        for function in view.pinning:
            self.pending_pins.pop((function, view.key), None)
        view.pinning.clear()
        view.unpinning.clear()
        view.reported = frozenset()
        self._refresh_unpinned(view)

    def _add_location(self, function: str, view: ExecutorView) -> None:
        view.pinned.add(function)
        self.function_locations.setdefault(function, set()).add(view.key)
        self.pinned_at.setdefault((function, view.key), self.clock())
        self._invalidate()

    def _remove_location(self, function: str, view: ExecutorView) -> None:
        view.pinned.discard(function)
        locations = self.function_locations.get(function)
        if locations is not None:
            locations.discard(view.key)
            if not locations:
                del self.function_locations[function]
        self.pinned_at.pop((function, view.key), None)
        self._invalidate()

    def _refresh_unpinned(self, view: ExecutorView) -> None:
        for executor_type, unpinned in self.unpinned_executors.items():
            if executor_type == view.executor_type and not view.pinned and not view.pinning \
                    and view.key in self.executors:
                unpinned.add(view.key)
            else:
                unpinned.discard(view.key)

    def _invalidate(self) -> None:
        self._candidates[0].clear()
        self._candidates[1].clear()

    # --- calls (the hot path) -------------------------------------------------------------------------------

    def pick_executor(self, function: str, gpu: bool = False, refs: list[str] | None = None,
                      avoid: Collection[str] = (), now: float = 0.0, call_id: str = "",
                      after: str = "") -> ExecutorView:
        """The executor for one call of ``function``. ``refs`` are the store keys the call references;
        executors whose address is in ``avoid`` (running a parallel branch of the same call) only when no
        other candidate is left; ``now``, ``call_id`` and ``after`` (the executor of the one step of the same
        call this step runs after: it holds this step's input) are placement.py's (Cloudburst's policy places
        each function on its own). Raises ``NoExecutorAvailable`` when no live executor can run it."""
        candidates = self._candidates[gpu].get(function)
        if candidates is None:
            candidates = self._build_candidates(function, gpu)
        chosen = candidates[0] if len(candidates) == 1 else self._choose(candidates, refs, avoid)
        chosen.recent_calls.append(self.tick)
        return chosen

    def _candidate_pool(self, function: str, gpu: bool) -> tuple[list[ExecutorView], bool]:
        """The executors that may run ``function``: its fresh locations, else any fresh executor of its type,
        else any live one; and whether they are its locations. ``NoExecutorAvailable`` when there is none."""
        now = self.clock()
        typed = self._live_of_type(gpu, now)
        if not typed:
            kind = "GPU" if gpu else "CPU"
            raise NoExecutorAvailable(
                f"no live {kind} executor can run {function!r}"
                + (": start the cluster with `cbctl up --gpu-executors N`" if gpu else ": check `cbctl status`"))
        fresh = [v for v in typed if now - v.last_seen <= self.settings.stale_s]
        pinned = [v for v in fresh if function in v.pinned]
        if not pinned and not fresh:
            pinned = [v for v in typed if function in v.pinned]
        return pinned or fresh or typed, bool(pinned)

    def _build_candidates(self, function: str, gpu: bool) -> tuple[ExecutorView, ...]:
        pool, pinned = self._candidate_pool(function, gpu)
        calm = [v for v in pool if v.key not in self.backoff]
        if not calm:
            calm = pool
            if pinned:
                self.overloaded.add(function)
        candidates = tuple(sorted(calm, key=lambda v: v.key))
        self._candidates[gpu][function] = candidates
        return candidates

    def _live_of_type(self, gpu: bool, now: float) -> list[ExecutorView]:
        """Live executors that may run a function: GPU ones for a GPU function; CPU ones otherwise, or the
        GPU ones when the cluster has no CPU executor."""
        live = [v for v in self.executors.values() if now - v.last_seen <= self.settings.silence_s]
        if gpu:
            return [v for v in live if v.executor_type == "gpu"]
        return [v for v in live if v.executor_type != "gpu"] or live

    def _choose(self, candidates: tuple[ExecutorView, ...], refs: list[str] | None,
                avoid: Collection[str]) -> ExecutorView:
        pool: Collection[ExecutorView] = candidates
        if avoid:
            pool = [v for v in candidates if v.address not in avoid] or candidates
        if refs and self.settings.locality and self.key_locations:
            best, most = [], 0
            for view in pool:
                cached = 0
                for ref in refs:
                    holders = self.key_locations.get(ref)
                    if holders is not None and view.key in holders:
                        cached += 1
                if cached > most:
                    best, most = [view], cached
                elif cached == most and cached:
                    best.append(view)
            if best:
                pool = best
        chosen, fewest, ties = None, 0, 0
        for view in pool:  # fewest recent calls; among equals, each equally likely (reservoir sampling)
            calls = len(view.recent_calls)
            if chosen is None or calls < fewest:
                chosen, fewest, ties = view, calls, 1
            elif calls == fewest:
                ties += 1
                if self.rng.random() * ties < 1.0:
                    chosen = view
        assert chosen is not None  # candidates are never empty
        return chosen

    # --- pinning -----------------------------------------------------------------------------------------

    def set_wanted(self, functions: Mapping[str, bool]) -> list[PinAction]:
        """The functions that must stay pinned (those of registered DAGs), each with its gpu flag; returns
        the unpins of functions no longer wanted (removed). Only removals unpin: a scheduler whose registry
        lags another's sees fewer functions, never a function that was removed, so it cannot undo pins."""
        if functions == self.wanted:
            return []
        dropped = [f for f in self.wanted if f not in functions]
        now = self.clock()
        self.wanted_since = {f: self.wanted_since.get(f, now) for f in functions}
        self.wanted = dict(functions)
        self._invalidate()
        actions = []
        for function in dropped:
            actions += self.forget_function(function)
        return actions

    def ensure_pinned(self, settle_s: float = 0.0) -> list[PinAction]:
        """Pin every wanted function that has no location and no pin under way (a DAG just registered, or
        its executors left or restarted), preferring executors with nothing pinned. ``settle_s`` skips
        functions wanted for less than that: a DAG registered through another scheduler is pinned by that
        one, and its executors report the pin here within a status interval."""
        actions = []
        now = self.clock()
        for function, gpu in self.wanted.items():
            if function in self.function_locations or any(f == function for f, _ in self.pending_pins):
                continue
            if now - self.wanted_since.get(function, now) < settle_s:
                continue
            target = self._placement_target(function, gpu, only_unpinned=False)
            if target is not None:
                actions.append(self._request_pin(function, target))
        return actions

    def _placement_target(self, function: str, gpu: bool, only_unpinned: bool) -> ExecutorView | None:
        now = self.clock()
        options = [
            v for v in self._live_of_type(gpu, now)
            if function not in v.pinned and function not in v.pinning and (function, v.key) not in self.refused
            and now - v.last_seen <= self.settings.stale_s
            and (not only_unpinned or (not v.pinned and not v.pinning and v.key not in self.backoff))
        ]
        if not options:
            return None
        return min(options, key=lambda v: (bool(v.pinned or v.pinning), v.key in self.backoff,
                                           len(v.pinned) + len(v.pinning), v.utilization, v.key))

    def _request_pin(self, function: str, view: ExecutorView) -> PinAction:
        view.unpinning.discard(function)  # the executor handles an earlier unpin first, then this pin
        view.pinning.add(function)
        self.pending_pins[(function, view.key)] = self.clock()
        self._refresh_unpinned(view)
        return PinAction(function, view.executor_id, view.address, True)

    def _request_unpin(self, function: str, view: ExecutorView) -> PinAction:
        view.unpinning.add(function)
        self._remove_location(function, view)
        self._refresh_unpinned(view)
        return PinAction(function, view.executor_id, view.address, False)

    def pin_result(self, executor_id: str, function: str, accepted: bool) -> list[PinAction]:
        """An executor's answer to a pin request; a refusal of a function that is pinned nowhere places it
        on another executor (returned), and that executor is not asked again for a while."""
        view = self._by_id(executor_id)
        if view is None:
            return []  # it left meanwhile; ensure_pinned places the function again if needed
        self.pending_pins.pop((function, view.key), None)
        view.pinning.discard(function)
        if accepted:
            self._add_location(function, view)
            self.pinned_at[(function, view.key)] = self.clock()
        else:
            self.refused[(function, view.key)] = self.clock()
        self._refresh_unpinned(view)
        return [] if accepted else self.ensure_pinned()

    def forget_function(self, function: str) -> list[PinAction]:
        """A function was removed: unpin it everywhere."""
        self.wanted.pop(function, None)
        self.overloaded.discard(function)
        return [self._request_unpin(function, self.executors[k])
                for k in sorted(self.function_locations.get(function, ())) if k in self.executors]

    def _by_id(self, executor_id: str) -> ExecutorView | None:
        for view in self.executors.values():
            if view.executor_id == executor_id:
                return view
        return None

    # --- the timer ---------------------------------------------------------------------------------------

    def periodic_update(self) -> list[PinAction]:
        """Expire old backoff entries, call times, pin requests and refusals; forget silent executors;
        rebuild key locations from the cached keys executors publish; then re-pin, scale out and scale in."""
        now = self.tick = self.clock()
        settings = self.settings
        for view in [v for v in self.executors.values() if now - v.last_seen > 4 * settings.silence_s]:
            self.forget_executor(view)
        for key in [k for k, since in self.backoff.items() if now - since > settings.backoff_window_s]:
            del self.backoff[key]
        horizon = now - settings.call_window_s
        for times in self.running_counts.values():
            while times and times[0] < horizon:
                times.popleft()
        actions: list[PinAction] = []
        for (function, key), asked in list(self.pending_pins.items()):
            if now - asked > settings.pin_timeout_s:
                actions += self.pin_result(key[1], function, False)  # as if refused: placed elsewhere
        for refusal in [r for r, at in self.refused.items() if now - at > settings.pin_retry_s]:
            del self.refused[refusal]
        for view in self.executors.values():
            if view.unpinning and now - view.last_seen > settings.silence_s:
                view.unpinning.clear()
        for key, status in self.thread_statuses.items():
            self._set_cached_keys(key, status.cached_keys)
        self.updates += 1
        self._invalidate()
        if now - self.started >= settings.start_grace_s:
            actions += self.ensure_pinned(settle_s=settings.start_grace_s)
        if settings.scale_out:
            actions += self._scale_out()
            actions += self._scale_in(now)
        self.overloaded.clear()
        return actions

    def _set_cached_keys(self, key: ExecutorKey, cached_keys: list[str]) -> None:
        """Bring key_locations up to date with the cached keys ``key`` publishes. Incremental, since a status
        lists up to thousands of keys and mostly the same ones as a second earlier; the result is exactly a
        rebuild from every executor's latest list."""
        old = self._published.get(key)
        if old is cached_keys or old == cached_keys:
            return
        before, after = set(old or ()), set(cached_keys)
        for dropped in before - after:
            holders = self.key_locations.get(dropped)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self.key_locations[dropped]
        for added in after - before:
            self.key_locations.setdefault(added, set()).add(key)
        self._published[key] = cached_keys

    def _scale_out(self) -> list[PinAction]:
        actions = []
        for function in sorted(self.overloaded):
            locations = self.function_locations.get(function)
            if not locations or any(k not in self.backoff for k in locations):
                continue  # pinned nowhere (ensure_pinned's job), or a location calmed down since
            if any(f == function for f, _ in self.pending_pins):
                continue  # one extra executor at a time
            gpu = self.wanted.get(function, any(self.executors[k].executor_type == "gpu" for k in locations))
            target = self._placement_target(function, gpu, only_unpinned=True)
            if target is not None:
                actions.append(self._request_pin(function, target))
        return actions

    def _scale_in(self, now: float) -> list[PinAction]:
        actions = []
        for function, locations in list(self.function_locations.items()):
            if len(locations) <= 1:
                self.calm_since.pop(function, None)
                continue
            hot = any(k in self.backoff or self.executors[k].utilization > self.settings.scale_in_utilization
                      for k in locations)
            if hot:
                self.calm_since[function] = now
                continue
            since = self.calm_since.setdefault(function, now)
            if now - since >= self.settings.scale_in_calm_s:
                newest = max(locations, key=lambda k: (self.pinned_at.get((function, k), 0.0), k))
                actions.append(self._request_unpin(function, self.executors[newest]))
        for function in [f for f in self.calm_since if f not in self.function_locations]:
            del self.calm_since[function]
        return actions

    # --- load (placement="outstanding" acts on these; Cloudburst's policy has no such signal) ---------------

    def process_load(self, load: ExecutorLoad) -> list[tuple[ExecutorView, str]]:
        """An executor turned idle, busy or backlogged; returns (idle executor, backlogged executor's address)
        pairs to send steal hints for. Cloudburst's policy places by recent calls and utilization only."""
        return []

    def calls_finished(self, calls: Iterable[Any]) -> None:
        """These calls (``retries.InFlightCall``, dispatched by this scheduler) are over: their caller has the
        results. Cloudburst's policy does not count outstanding work."""

    def call_moved(self, source: str, to: str) -> None:
        """An executor handed a queued step to another (work stealing)."""

    def rehint(self) -> list[tuple[ExecutorView, str]]:
        """Steal hints again for executors still backlogged (the scheduler's timer); see ``process_load``."""
        return []

    def take_actions(self) -> list[PinAction]:
        """Pins decided while placing calls, for the scheduler to send; Cloudburst's policy pins only on its
        timer."""
        return []

    # --- reading -----------------------------------------------------------------------------------------

    def has_type(self, executor_type: str) -> bool:
        return any(v.executor_type == executor_type for v in self.executors.values())

    def locations_of(self, function: str) -> list[str]:
        """Ids of the executors where ``function`` is pinned, sorted."""
        return sorted(k[1] for k in self.function_locations.get(function, ()))

    def describe(self) -> dict[str, Any]:
        """The policy's state for `cbctl top` and `cluster_info` (plain JSON-able data, executors by id)."""
        now = self.clock()
        return {
            "settings": asdict(self.settings),
            "executors": {
                v.executor_id: {"host": v.host, "type": v.executor_type, "address": v.address,
                                "pinned": sorted(v.pinned), "pinning": sorted(v.pinning),
                                "utilization": v.utilization, "queue_length": v.queue_length,
                                "backoff": v.key in self.backoff, "recent_calls": len(v.recent_calls),
                                "outstanding": v.outstanding,
                                "status_age_s": round(now - v.last_seen, 3)}
                for v in sorted(self.executors.values(), key=lambda v: v.key)},
            "function_locations": {f: self.locations_of(f) for f in sorted(self.function_locations)},
            "unpinned": {t: sorted(k[1] for k in keys) for t, keys in self.unpinned_executors.items()},
            "backoff": {k[1]: round(now - since, 3) for k, since in sorted(self.backoff.items())},
            "pending_pins": sorted([f, k[1]] for f, k in self.pending_pins),
            "cached_keys": len(self.key_locations),
            "updates": self.updates,
            "placement": self.settings.placement,
        }
