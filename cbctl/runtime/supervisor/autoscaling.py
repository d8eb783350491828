"""Autoscaling, the supervisor's side: collect the schedulers' load reports, ask the ``Autoscaler`` (pure, in
``autoscaler.py``) for a target, and carry it out on the executor pool: start CPU executors, or depart idle ones
gracefully (SIGTERM: the executor finishes what it was sent, as in ``cbctl scale``; no call is lost).

One place decides: the head's supervisor. Every decision is a log line with its reason and figures, and is
counted for `cbctl top`. While autoscaling is on, the pool is reconciled to the target every step, so an
executor that dies (restarted as usual) or one that could not start is made up for, and `cbctl scale` is
refused (it would fight the autoscaler).

Joined hosts that offer capacity (``cbctl join --max-executors N``, carried in every ``NodeHeartbeat``) are part
of the pool: the figures count their CPU executors too, the range's MAX is the head's own MAX plus every such
host's N, and ``autoscaler.spread`` splits each target over the hosts (the head's share first on ties). The head
applies its own share here; each host's share travels in the answer to its next heartbeat (``NodeAck.executors``)
and its node supervisor carries it out with the same ``ExecutorResizer`` steps (start, or graceful departure).
Hosts joined without ``--max-executors`` keep their fixed size and stay out of the figures.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cbctl.runtime.defaults import AUTOSCALE_REPORT_INTERVAL_S
from cbctl.runtime.supervisor.autoscaler import Autoscaler, AutoscaleSettings, Decision, LoadFigures, spread
from cbctl.runtime.supervisor.child import Child
from cbctl.runtime.supervisor.nodes import NodeTable
from cbctl.runtime.supervisor.scaling import ACTIVE_STATES, ExecutorPool
from cbctl.runtime.wire.messages import ExecutorLost, LoadReport

log = logging.getLogger(__name__)


class ExecutorResizer:
    """Brings one supervisor's CPU executors to a count: starts them, or departs idle ones gracefully, and
    forgets them once they exited. The head's ``AutoscaleControl`` is one; a joined host's node supervisor runs
    one for the count the head sends it (``node.py``)."""

    def __init__(self, pool: ExecutorPool, clock: Any = time.monotonic) -> None:
        self.pool = pool
        self.clock = clock
        self.departing: dict[str, float] = {}  # executor name -> when it was sent SIGTERM
        self.started = 0
        self.departed = 0

    def active(self) -> list[Child]:
        """The CPU executors the pool runs (starting, ready or being restarted), not those departing."""
        return [c for c in self.pool.children.values() if c.config.role == "executor"
                and c.config.options.get("executor_type", "cpu") == "cpu" and c.state in ACTIVE_STATES]

    def executor_load(self) -> dict[str, float]:
        """Load per executor name, to depart the idlest first; none known here: the highest-numbered go."""
        return {}

    def apply(self, target: int) -> None:
        """Start or depart CPU executors until ``target`` run. Departures take idle executors first (by their
        latest reported utilization and queue), the highest-numbered among equals (the heir of a departing
        executor is the lowest-numbered, which stays)."""
        active = self.active()
        if len(active) < target:
            pool = self.pool
            indices = [c.config.index for c in pool.children.values() if c.config.role == "executor"]
            for _ in range(target - len(active)):
                index = pool.highest_executor_index = max([pool.highest_executor_index, *indices]) + 1
                child = pool.start_executor(index, "cpu")
                self.started += 1
                log.info("autoscale: started %s", child.config.name)
            pool.spec.executors = target
        elif len(active) > target:
            load = self.executor_load()
            victims = sorted(active, key=lambda c: (load.get(c.config.name, 0.0), -c.config.index))
            for child in victims[:len(active) - target]:
                self.depart(child)
            self.pool.spec.executors = target

    def depart(self, child: Child) -> None:
        child.state = "stopping"  # not restarted when it exits
        if child.process is not None and child.process.is_alive():
            child.process.terminate()
        self.departing[child.config.name] = self.clock()
        self.departed += 1
        log.info("autoscale: %s departs (it finishes the calls it was sent)", child.config.name)

    def reap(self) -> None:
        """Forget departed executors once they exited (their index is never reused); kill one still running
        past the shutdown bound."""
        changed = False
        now = self.clock()
        for name, since in list(self.departing.items()):
            child = self.pool.children.get(name)
            if child is None:
                del self.departing[name]
                continue
            if child.process is not None and child.process.is_alive():
                bound = self.pool.spec.departure_timeout_s
                if now - since > bound:
                    log.warning("%s did not leave within %g s: killing it; its calls are dispatched again", name,
                                bound)
                    child.process.kill()
                    child.process.join(5)
                    # as in `cbctl scale`: the schedulers dispatch every call it still held again, elsewhere
                    self.pool.tell_schedulers(ExecutorLost(
                        self.pool.executor_id(child), child.address, child.pid,
                        f"departing in an autoscale-down, it had not finished its calls within {bound:g} s: killed"))
                continue
            if child.process is not None:
                child.process.join(0)
            # its index is never reused: a late message for it must not reach a newcomer
            self.pool.highest_executor_index = max(self.pool.highest_executor_index, child.config.index)
            del self.pool.children[name]
            del self.departing[name]
            changed = True
        if changed:
            self.pool.write_cluster_file()


class AutoscaleControl(ExecutorResizer):
    """The autoscaler of the head supervisor's pool and of the joined hosts that offer capacity; ``step`` is its
    timer work."""

    def __init__(self, pool: ExecutorPool, minimum: int, maximum: int, settings: AutoscaleSettings,
                 clock: Any = time.monotonic, departing: AutoscaleControl | None = None,
                 nodes: NodeTable | None = None, home: str = "") -> None:
        """``maximum``: the head's own MAX; joined hosts' capacity adds to it. ``departing``: the control of an
        earlier autoscaling period (turned off since), whose departing executors and counts this one takes
        over. ``nodes``: the joined hosts; ``home``: the head's host name (its share comes first on ties)."""
        super().__init__(pool, clock)
        self.enabled = True
        self.nodes = nodes
        self.home = home
        self.own_maximum = maximum
        self.assigned: dict[str, int] = {}  # joined host -> the CPU executors it was told to run
        current = sum(self.running().values())  # the joined hosts' executors count from the start
        self.autoscaler = Autoscaler(minimum, sum(self.capacities().values()), current, settings, clock)
        self.reports: dict[str, tuple[LoadReport, float]] = {}  # by scheduler
        self.next_step = 0.0
        if departing is not None:
            self.departing = departing.departing
            self.started, self.departed = departing.started, departing.departed
            self.autoscaler.ups, self.autoscaler.downs = departing.autoscaler.ups, departing.autoscaler.downs
        if self.autoscaler.target != current:  # `cbctl autoscale` with the cluster outside the new range
            self.carry_out(self.autoscaler.target)

    # --- figures --------------------------------------------------------------------------------------

    def capacities(self) -> dict[str, int]:
        """The hosts the autoscaler may start executors on, with how many: the head (its own MAX) and every
        joined host that offers some."""
        joined = self.nodes.capacities() if self.nodes is not None else {}
        return {self.home: self.own_maximum, **joined}

    def running(self) -> dict[str, int]:
        """CPU executors per host: the head's own, and for a joined host the count it was last told (its
        heartbeat lists only those ready; one starting there still counts), else what it lists."""
        counts = {self.home: len(self.active())}
        if self.nodes is not None:
            for host in self.nodes.capacities():
                listed = len(self.nodes.nodes[host].cpu_executor_ids())
                counts[host] = self.assigned.get(host, listed)
        return counts

    def pool_ids(self) -> set[str]:
        """The executor ids whose figures count: the head's CPU executors and those of the hosts offering
        capacity."""
        names = {c.config.name for c in self.active()}
        if self.nodes is not None:
            for host in self.nodes.capacities():
                names.update(self.nodes.nodes[host].cpu_executor_ids())
        return names

    def on_report(self, report: LoadReport) -> None:
        self.reports[report.scheduler] = (report, self.clock())
        if report.parked and self.autoscaler.target == 0:
            self.step()  # scale from zero: the parked call should not wait for the timer

    def figures(self) -> LoadFigures | None:
        """The figures of the pool's executors, from the freshest report that mentions each (every scheduler
        hears every executor), and the parked calls of every scheduler that reported lately; None without a
        recent report (the autoscaler then decides nothing)."""
        now = self.clock()
        fresh = [(r, t) for r, t in self.reports.values() if now - t <= self.autoscaler.settings.stale_s]
        if not fresh:
            return None
        names = self.pool_ids()
        per_executor: dict[str, tuple[float, list[float]]] = {}
        for report, received in fresh:
            for name, (utilization, queue) in report.executors.items():
                if name in names and received >= per_executor.get(name, (-1.0, []))[0]:
                    per_executor[name] = (received, [utilization, queue])
        busy = sum(u for _, (u, _) in per_executor.values())
        queued = int(sum(q for _, (_, q) in per_executor.values()))
        return LoadFigures(round(busy, 3), queued, sum(r.parked for r, _ in fresh))

    # --- deciding and carrying out ----------------------------------------------------------------------

    def step(self) -> None:
        """Timer work: reap departed executors, decide, and bring the pool to the target (turned off: only
        reap the executors still departing)."""
        self.next_step = self.clock() + AUTOSCALE_REPORT_INTERVAL_S
        self.reap()
        if not self.enabled:
            return
        self.sync_capacity()
        figures = self.figures()
        if figures is not None:
            decision = self.autoscaler.observe(figures)
            if decision is not None:
                self.log_decision(decision, figures)
        self.carry_out(self.autoscaler.target)

    def sync_capacity(self) -> None:
        """The range's MAX follows the joined hosts' capacity (a host joins, leaves or is lost)."""
        maximum = sum(self.capacities().values())
        if maximum != self.autoscaler.maximum:
            log.info("autoscale: capacity now %d CPU executors (%s)", maximum,
                     ", ".join(f"{h} {n}" for h, n in sorted(self.capacities().items())))
            decision = self.autoscaler.set_range(self.autoscaler.minimum, maximum, "the hosts' capacity changed")
            if decision is not None:
                self.log_decision(decision, self.figures())
        self.assigned = {h: n for h, n in self.assigned.items() if h in self.capacities()}

    def carry_out(self, target: int) -> None:
        """Split ``target`` over the hosts (``spread``), apply the head's share here and keep each joined
        host's for the answer to its next heartbeat."""
        shares = spread(target, self.capacities(), self.running(), self.home)
        own = shares.pop(self.home)
        for host, count in shares.items():
            if self.assigned.get(host) != count:
                log.info("autoscale: host %s runs %d CPU executor(s)", host, count)
        self.assigned = shares
        self.apply(own)

    def share_of(self, host: str) -> int:
        """What to tell ``host`` in its heartbeat's answer: its count, or -1 (keep what it runs)."""
        if not self.enabled:
            return -1
        return self.assigned.get(host, -1)

    def disable(self, fixed: int) -> None:
        """`cbctl autoscale off`: bring the pool to ``fixed`` executors (gracefully) and decide no more."""
        self.apply(fixed)
        self.enabled = False
        self.assigned = {}  # joined hosts keep what they run

    def counts(self) -> dict[str, int]:
        return {"scale_ups": self.autoscaler.ups, "scale_downs": self.autoscaler.downs, "started": self.started,
                "departed": self.departed, "departing": len(self.departing)}

    def set_range(self, minimum: int, maximum: int) -> None:
        """`cbctl autoscale MIN:MAX` on a cluster that autoscales: ``maximum`` is the head's own."""
        self.own_maximum = maximum
        decision = self.autoscaler.set_range(minimum, sum(self.capacities().values()))
        if decision is not None:
            self.log_decision(decision, self.figures())
        self.carry_out(self.autoscaler.target)

    def log_decision(self, decision: Decision, figures: LoadFigures | None) -> None:
        log.info("autoscale %s: %d -> %d CPU executors: %s [range %d:%d, need %.2f]", decision.direction,
                 decision.previous, decision.target, decision.reason, self.autoscaler.minimum,
                 self.autoscaler.maximum,
                 figures.need(self.autoscaler.settings.target_utilization) if figures else float("nan"))

    def executor_load(self) -> dict[str, float]:
        """Latest utilization plus queue per executor, from the freshest reports."""
        load: dict[str, tuple[float, float]] = {}
        for report, received in self.reports.values():
            for name, (utilization, queue) in report.executors.items():
                if received >= load.get(name, (-1.0, 0.0))[0]:
                    load[name] = (received, utilization + queue)
        return {name: value for name, (_, value) in load.items()}

    def describe(self) -> dict[str, Any]:
        """The autoscaler's state for `cbctl status` and `cbctl top` (plain data)."""
        figures = self.figures()
        # "executors": the head's own; "hosts": what each joined host offering capacity was told to run
        return {**self.autoscaler.describe(), "enabled": True, "executors": len(self.active()), **self.counts(),
                "head_max": self.own_maximum, "hosts": dict(sorted(self.assigned.items())),
                "figures": None if figures is None else {
                    "busy": figures.busy, "queued": figures.queued, "parked": figures.parked,
                    "need": round(figures.need(self.autoscaler.settings.target_utilization), 2)}}
