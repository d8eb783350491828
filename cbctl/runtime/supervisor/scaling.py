"""``cbctl scale --executors N``, the supervisor's side: start more CPU executors, or depart the
highest-numbered ones, as one operation that the supervisor's loop advances without blocking (children keep
being watched and restarted meanwhile), answering the request once every new executor is ready or every
departing one has exited.

Departing is graceful (see ``departure``): SIGTERM makes an executor stop taking work, finish what it was
sent and exit, so a scale-down under load loses no call. One that is still running calls after the departure
bound (``ClusterSpec.departure_timeout_s``, `cbctl up --departure-timeout`) is killed, and the schedulers are told
at once, as for a crash, so they dispatch its unfinished calls again on the executors that stay; the answer
names it under ``cut_short``. Executor indices are never reused: a newcomer never
inherits a departed executor's id or address, so a late message meant for the old one cannot reach it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from cbctl.errors import InvalidArgument
from cbctl.runtime.defaults import MAX_EXECUTORS, STARTUP_TIMEOUT_S
from cbctl.runtime.supervisor.child import Child
from cbctl.runtime.wire.messages import ControlResponse, ExecutorLost

log = logging.getLogger(__name__)

ACTIVE_STATES = ("starting", "ready", "restarting")


class _Spec(Protocol):
    executors: int
    departure_timeout_s: float


class ExecutorPool(Protocol):
    """What scaling sees of the supervisor: its children, the highest executor index used so far, the
    cluster spec (whose ``executors`` it updates), a way to start an executor, the cluster file, and the
    schedulers (told when a departing executor is cut short)."""

    children: dict[str, Child]
    highest_executor_index: int
    spec: _Spec

    def start_executor(self, index: int, executor_type: str) -> Child: ...

    def write_cluster_file(self) -> None: ...

    def tell_schedulers(self, message: ExecutorLost) -> None: ...

    def executor_id(self, child: Child) -> str: ...


@dataclass(frozen=True)
class ScalePlan:
    start: list[int]  # indices of the CPU executors to start
    stop: list[str]  # names of the CPU executors to depart


def plan_scale(cpu_executors: list[tuple[int, str]], highest_index: int, target: Any,
               other_executors: int) -> ScalePlan:
    """What to start or stop to run ``target`` CPU executors, given the active ones as ``(index, name)``,
    the highest executor index ever used, and how many other (GPU) executors stay."""
    if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target <= MAX_EXECUTORS:
        raise InvalidArgument(f"--executors must be a whole number from 0 to {MAX_EXECUTORS}, not {target!r}")
    if target + other_executors < 1:
        raise InvalidArgument("a cluster needs at least one executor: pass --executors N with N >= 1")
    current = sorted(cpu_executors)
    if target >= len(current):
        return ScalePlan(list(range(highest_index + 1, highest_index + 1 + target - len(current))), [])
    return ScalePlan([], [name for _, name in current[target:]])


@dataclass
class ScaleOperation:
    """One scale request under way; ``envelope`` is the requester's ROUTER routing frames for the answer."""

    envelope: list[bytes]
    req_id: int
    target: int
    starting: list[str] = field(default_factory=list)
    stopping: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    cut_short: list[str] = field(default_factory=list)  # departed past the bound: killed, calls re-dispatched
    start_deadline: float = 0.0
    kill_at: float = 0.0


def _executors(supervisor: ExecutorPool, executor_type: str) -> list[Child]:
    return [c for c in supervisor.children.values() if c.config.role == "executor"
            and c.config.options.get("executor_type", "cpu") == executor_type and c.state in ACTIVE_STATES]


def begin(supervisor: ExecutorPool, envelope: list[bytes], req_id: int, arguments: dict[str, Any]) -> ScaleOperation:
    """Validate the request and start it: spawn the new executors, or send SIGTERM to the departing ones."""
    cpu = _executors(supervisor, "cpu")
    indices = [c.config.index for c in supervisor.children.values() if c.config.role == "executor"]
    highest = supervisor.highest_executor_index = max([supervisor.highest_executor_index, *indices])
    plan = plan_scale([(c.config.index, c.config.name) for c in cpu], highest, arguments.get("executors"),
                      len(_executors(supervisor, "gpu")))
    now = time.monotonic()
    operation = ScaleOperation(envelope, req_id, arguments["executors"], start_deadline=now + STARTUP_TIMEOUT_S,
                               kill_at=now + supervisor.spec.departure_timeout_s)
    for index in plan.start:
        child = supervisor.start_executor(index, "cpu")
        operation.starting.append(child.config.name)
        supervisor.highest_executor_index = max(supervisor.highest_executor_index, index)
    for name in plan.stop:
        child = supervisor.children[name]
        child.state = "stopping"  # not restarted when it exits
        if child.process is not None and child.process.is_alive():
            child.process.terminate()
    operation.stopping = list(plan.stop)
    supervisor.spec.executors = operation.target
    log.info("scaling to %d CPU executors: starting %s, stopping %s", operation.target,
             operation.starting or "none", operation.stopping or "none")
    return operation


def advance(supervisor: ExecutorPool, operation: ScaleOperation) -> ControlResponse | None:
    """Move the operation on; returns the answer once it is done (or failed), else None."""
    now = time.monotonic()
    for name in list(operation.stopping):
        child = supervisor.children[name]
        if child.process is not None and child.process.is_alive():
            if now > operation.kill_at:
                bound = supervisor.spec.departure_timeout_s
                log.warning("%s did not leave within %g s: killing it; its calls are dispatched again", name, bound)
                child.process.kill()
                child.process.join(5)
                # as for a crash: the schedulers dispatch every call it still held again, on executors that stay
                supervisor.tell_schedulers(ExecutorLost(
                    name, child.address, child.pid,
                    f"departing in a scale-down, it had not finished its calls within {bound:g} s: killed"))
                operation.cut_short.append(name)
            continue
        if child.process is not None:
            child.process.join(0)
        del supervisor.children[name]  # gone for good; its index is not reused
        operation.stopping.remove(name)
        operation.stopped.append(name)
    for name in operation.starting:
        child = supervisor.children[name]
        if child.error or child.state == "failed":
            return _failed(supervisor, operation, f"{name} could not start: {child.error or 'it kept crashing'}")
    waiting = [n for n in operation.starting if supervisor.children[n].state != "ready"]
    if waiting and now > operation.start_deadline:
        return _failed(supervisor, operation, f"{', '.join(waiting)} did not report ready within "
                                              f"{STARTUP_TIMEOUT_S:.0f} s: see `cbctl logs executor`")
    if waiting or operation.stopping:
        return None
    supervisor.write_cluster_file()
    log.info("scaled to %d CPU executors", operation.target)
    return ControlResponse(operation.req_id, True, {"executors": operation.target, "started": operation.starting,
                                                    "stopped": sorted(operation.stopped),
                                                    "cut_short": sorted(operation.cut_short)})


def _failed(supervisor: ExecutorPool, operation: ScaleOperation, reason: str) -> ControlResponse:
    """Stop what this operation started (a half-started executor must not linger) and say why."""
    for name in operation.starting:
        child = supervisor.children.pop(name)
        if child.process is not None and child.process.is_alive():
            child.process.kill()
            child.process.join(5)
    supervisor.spec.executors = len(_executors(supervisor, "cpu"))
    supervisor.write_cluster_file()
    return ControlResponse(operation.req_id, False, None, "CbctlError", f"scale failed: {reason}")
