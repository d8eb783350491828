"""What the peers benchmark measures, independent of the system measured.

Every system implements ``System`` (one module each); the runner drives it through the loops below, so all
systems are timed by the same code. Workloads, each checked against its expected result on every call:

- ``noop``: one function returning its argument;
- ``chain``: ``square(increment(x))``, two functions, the second fed by the first;
- ``fan``: ``split -> (left, right) -> merge``, a 4-function fan-out/fan-in returning ``5 * x``;
- ``state``: a function reading a 1 MB value that was stored once, up front, and returning its length;
- ``in_flight``: the chain again, with ``IN_FLIGHT`` calls outstanding (throughput, and latency under load);
- ``cold_start``: from nothing (a fresh process) to the first result of ``noop`` (timed by the driver).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any, Protocol

#: Size of the value the ``state`` workload reads: large enough that copying it shows, as in issue 9.
STATE_BYTES = 1 << 20
#: Calls outstanding in the ``in_flight`` workload (issue 9: "throughput with 64 calls in flight").
IN_FLIGHT = 64
#: Sequential workloads, in the order they run and are reported.
SEQUENTIAL = ("noop", "chain", "fan", "state")
#: Every workload, in report order.
WORKLOADS = ("noop", "chain", "fan", "state", "in_flight", "cold_start")

EXPECTED: dict[str, Callable[[int], Any]] = {
    "noop": lambda x: x,
    "chain": lambda x: (x + 1) ** 2,
    "fan": lambda x: 5 * x,
    "state": lambda x: STATE_BYTES,
    "in_flight": lambda x: (x + 1) ** 2,
}


class System(Protocol):
    """One system under test. ``start`` goes from nothing to ready to call ``noop`` (what cold start times);
    ``prepare`` deploys the rest and stores the 1 MB value; ``stop`` releases everything ``start`` made."""

    name: str

    def start(self) -> None: ...

    def prepare(self) -> None: ...

    def call(self, workload: str, x: int) -> Any:
        """One blocking call of a workload (``in_flight`` means the chain)."""

    def submit(self, workload: str, x: int) -> Any:
        """Start one call without waiting; returns a handle for ``wait``."""

    def wait(self, handle: Any) -> Any:
        """The result of a call ``submit`` started."""

    def stop(self) -> None: ...


class WrongResult(AssertionError):
    """A system returned something other than the workload's expected result: its timings mean nothing."""


def _check(workload: str, x: int, value: Any) -> None:
    expected = EXPECTED[workload](x)
    if value != expected:
        shown = f"{type(value).__name__} of length {len(value)}" if isinstance(value, bytes | str) else repr(value)
        raise WrongResult(f"{workload}({x}) returned {shown}, expected {expected!r}")


def sequential(system: System, workload: str, xs: range) -> tuple[list[float], float]:
    """Per-call latencies (s) of blocking calls one after another, and the wall time (s) of the block."""
    samples = []
    started = time.perf_counter()
    for x in xs:
        t = time.perf_counter()
        value = system.call(workload, x)
        samples.append(time.perf_counter() - t)
        _check(workload, x, value)
    return samples, time.perf_counter() - started


def windowed(system: System, workload: str, xs: range, in_flight: int = IN_FLIGHT) -> tuple[list[float], float]:
    """Latencies (s, submit to result) and wall time (s) of calls kept ``in_flight`` deep: the oldest call is
    waited for before the next is submitted, so a call's latency includes the queue ahead of it."""
    window: collections.deque[tuple[int, float, Any]] = collections.deque()
    samples = []

    def finish_oldest() -> None:
        x, sent, handle = window.popleft()
        value = system.wait(handle)
        samples.append(time.perf_counter() - sent)
        _check(workload, x, value)

    started = time.perf_counter()
    for x in xs:
        if len(window) >= in_flight:
            finish_oldest()
        window.append((x, time.perf_counter(), system.submit(workload, x)))
    while window:
        finish_oldest()
    return samples, time.perf_counter() - started
