"""The autoscaler's decision: how many CPU executors the cluster runs, from what the schedulers report.

Pure: ``Autoscaler.observe`` takes the figures of one moment (``LoadFigures``) and the time from the clock it
was given, and returns a ``Decision`` when the target changes; it owns no socket and starts nothing. The head's
supervisor feeds it (``autoscaling.py``) and carries the decision out; with joined hosts, where the executors
start is ``spread`` below, so one place decides for every host.

The rule, with the defaults of ``defaults.py`` (each one a ``--policy autoscale_NAME=VALUE``):

- *Need.* ``busy / target_utilization + queued + parked`` executors, where ``busy`` is the sum of the CPU
  executors' utilization (executors' worth of work running), ``queued`` the calls waiting in their queues and
  ``parked`` the calls the schedulers hold because no CPU executor runs. Its ceiling, clamped to ``MIN:MAX``,
  is the *recommendation* of that report.
- *Up.* When every recommendation of the last ``up_window_s`` is above the target, the target becomes the
  lowest of them: the level the need held throughout, not its peak, so a burst the executors drain within the
  window adds nothing and a longer one adds what it sustained.
- *From zero.* A parked call with no executor target starts one at once (the first call does not wait for a
  window); more follow by the rule above.
- *Down.* When every recommendation of the last ``down_window_s`` is below the target, the target becomes the
  highest of them (Kubernetes' scale-down stabilization): a load that returns within the window keeps its
  executors, so a load oscillating around a threshold does not add and remove executors every window. The
  window goes on after a scale-down, so the target keeps following its highest need down as that ages out.
- *Settle.* After a change up, reports are ignored for ``settle_s`` (new executors must report a full interval
  before the figures describe the new size) and each window starts over.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from cbctl.errors import InvalidArgument
from cbctl.runtime import defaults

#: Prefix of the ``--policy`` keys that tune the autoscaler (the others tune the placement policy).
POLICY_PREFIX = "autoscale_"


@dataclass(frozen=True)
class AutoscaleSettings:
    """The autoscaler's tunables (documented in ``defaults``); ``--policy autoscale_NAME=VALUE`` sets them."""

    target_utilization: float = defaults.AUTOSCALE_TARGET_UTILIZATION
    up_window_s: float = defaults.AUTOSCALE_UP_WINDOW_S
    down_window_s: float = defaults.AUTOSCALE_DOWN_WINDOW_S
    settle_s: float = defaults.AUTOSCALE_SETTLE_S
    stale_s: float = defaults.AUTOSCALE_STALE_S

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> AutoscaleSettings:
        """Settings from ``{autoscale_NAME: value}`` (numbers or command-line strings)."""
        known = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for key, raw in options.items():
            name = key.removeprefix(POLICY_PREFIX)
            if name not in known:
                raise InvalidArgument(f"unknown autoscale setting {key!r}: use one of "
                                      f"{', '.join(POLICY_PREFIX + n for n in sorted(known))}")
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise InvalidArgument(f"autoscale setting {key} must be a number, not {raw!r}") from None
            if not (math.isfinite(value) and value >= 0) or (name == "target_utilization" and value <= 0):
                raise InvalidArgument(f"autoscale setting {key} must be a finite number "
                                      f"{'> 0' if name == 'target_utilization' else '>= 0'}, not {raw!r}")
            values[name] = value
        return cls(**values)

    def as_options(self) -> dict[str, float]:
        return {POLICY_PREFIX + name: value for name, value in asdict(self).items()}


def parse_range(text: str, default_max: int, limit: int = defaults.MAX_EXECUTORS) -> tuple[int, int]:
    """``"MIN:MAX"`` (or ``"MIN:"`` for the machine's default MAX) -> ``(MIN, MAX)``, checked."""
    low, sep, high = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        minimum = int(low)
        maximum = int(high) if high.strip() else default_max
    except ValueError:
        raise InvalidArgument(f"--autoscale {text!r} must look like MIN:MAX (e.g. 0:4), or MIN: for the default MAX "
                              f"({default_max} on this machine)") from None
    if not 0 <= minimum <= maximum or not 1 <= maximum <= limit:
        raise InvalidArgument(f"--autoscale {text!r}: need 0 <= MIN <= MAX and 1 <= MAX <= {limit}")
    return minimum, maximum


@dataclass(frozen=True)
class LoadFigures:
    """What the schedulers report of the CPU executors, summed over them (see the module docstring)."""

    busy: float = 0.0
    queued: int = 0
    parked: int = 0

    def need(self, target_utilization: float) -> float:
        return self.busy / target_utilization + self.queued + self.parked

    def describe(self) -> str:
        return f"busy {self.busy:.2f}, queued {self.queued}, parked {self.parked}"


@dataclass(frozen=True)
class Decision:
    """A new target, why, and the figures behind it (for the supervisor's log and `cbctl top`)."""

    at: float
    previous: int
    target: int
    reason: str

    @property
    def direction(self) -> str:
        return "up" if self.target > self.previous else "down"


class Autoscaler:
    """Decides the number of CPU executors between ``minimum`` and ``maximum`` (see the module docstring)."""

    def __init__(self, minimum: int, maximum: int, target: int, settings: AutoscaleSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or AutoscaleSettings()
        self.clock = clock
        self.minimum, self.maximum = minimum, maximum
        self.target = self._clamp(target)
        self.changed_at = clock()
        self.history: collections.deque[tuple[float, int, LoadFigures]] = collections.deque()
        self.ups = 0
        self.downs = 0
        self.last: Decision | None = None

    def _clamp(self, count: int) -> int:
        return max(self.minimum, min(self.maximum, count))

    def recommend(self, figures: LoadFigures) -> int:
        """The executors this one report asks for (the ceiling of its need, clamped to the range)."""
        need = figures.need(self.settings.target_utilization)
        return self._clamp(math.ceil(need - 1e-9))

    def set_range(self, minimum: int, maximum: int, why: str = "") -> Decision | None:
        """A new ``MIN:MAX`` (`cbctl autoscale`, or joined hosts' capacity changed: ``why``): the target moves
        into it at once, if it must."""
        self.minimum, self.maximum = minimum, maximum
        target = self._clamp(self.target)
        if target == self.target:
            return None
        return self._change(target, why or f"range set to {minimum}:{maximum}")

    def observe(self, figures: LoadFigures) -> Decision | None:
        """One report's figures; the decision, if the target changes."""
        now = self.clock()
        settings = self.settings
        if self.target == 0 and figures.parked > 0:
            return self._change(1, f"a call waits and no executor runs ({figures.describe()})")
        if now - self.changed_at < settings.settle_s:
            return None  # the figures may still describe the cluster before the change
        history = self.history
        history.append((now, self.recommend(figures), figures))
        horizon = now - max(settings.up_window_s, settings.down_window_s)
        while len(history) > 1 and history[1][0] <= horizon:
            history.popleft()  # keep the newest entry at or before the horizon: it covers the window's start
        up = self._window(now, settings.up_window_s)
        if up and all(r > self.target for _, r, _ in up):
            level = min(r for _, r, _ in up)
            return self._change(level, f"work waits: need {level} or more for {settings.up_window_s:g} s "
                                       f"({figures.describe()})")
        down = self._window(now, settings.down_window_s)
        if down and all(r < self.target for _, r, _ in down):
            level = max(r for _, r, _ in down)
            return self._change(level, f"calm: need at most {level} for {settings.down_window_s:g} s "
                                       f"({figures.describe()})", settle=False)
        return None

    def _window(self, now: float, length: float) -> list[tuple[float, int, LoadFigures]]:
        """The reports of the last ``length`` seconds, or [] while the reports since the last change do not
        cover that long yet."""
        history = self.history
        if not history or now - history[0][0] < length:
            return []
        start = now - length
        # the newest report at or before the window's start speaks for the window's first moments
        first = max(i for i, (t, _, _) in enumerate(history) if t <= start)
        return list(history)[first:]

    def _change(self, target: int, reason: str, settle: bool = True) -> Decision:
        """Move to ``target``. After a scale-down the window goes on (``settle`` False): the executors that
        stay report the same work, so as the window's highest need ages out the target follows it down at once,
        instead of a whole window per step."""
        now = self.clock()
        decision = Decision(now, self.target, target, reason)
        if target > self.target:
            self.ups += 1
        else:
            self.downs += 1
        self.target = target
        if settle:
            self.changed_at = now
            self.history.clear()
        self.last = decision
        return decision

    def describe(self) -> dict[str, Any]:
        """For `cbctl top --json` and `cbctl status` (plain data)."""
        last = self.last
        return {"min": self.minimum, "max": self.maximum, "target": self.target, "scale_ups": self.ups,
                "scale_downs": self.downs, "settings": asdict(self.settings),
                "last_decision": None if last is None else {
                    "age_s": round(self.clock() - last.at, 1), "from": last.previous, "to": last.target,
                    "reason": last.reason}}


def spread(target: int, capacity: Mapping[str, int], running: Mapping[str, int], home: str = "") -> dict[str, int]:
    """How many CPU executors each host runs for a cluster-wide ``target``: hosts keep what they run as far as
    the target allows; additions go to the host with the most free capacity (``capacity``: a host's MAX, e.g.
    ``cbctl join --max-executors N``, the head's own being the autoscale MAX), removals come from the host
    running the most. Ties go in ``home``'s favour (the head: its executors start without a network hop and sit
    next to the store), then by host name, so the result is deterministic. The head's supervisor runs this and
    sends each node supervisor its count; a node supervisor only starts or departs."""
    counts = {host: min(running.get(host, 0), cap) for host, cap in capacity.items()}
    total = sum(counts.values())
    target = min(target, sum(capacity.values()))
    while total < target:
        host = min(sorted(capacity), key=lambda h: (counts[h] - capacity[h], h != home))
        counts[host] += 1
        total += 1
    while total > target:
        host = min(sorted(counts), key=lambda h: (-counts[h], h == home))
        counts[host] -= 1
        total -= 1
    return counts
