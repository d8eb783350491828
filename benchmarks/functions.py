"""The functions the latency and peers benchmarks deploy on cbctl, in a module of their own.

cloudpickle sends a function of an importable module by reference, so each executor imports the module a
function lives in when it first loads it: here that costs nothing, where the benchmark scripts themselves
import rich, zmq and multiprocessing (about 0.1 s, once counted in the peers' cold start of cbctl).
Standard library only, and keep it so.
"""

from __future__ import annotations

from typing import Any


def noop(cb: Any, x: Any) -> Any:
    return x


def increment(cb: Any, x: int) -> int:
    return x + 1


def square(cb: Any, x: int) -> int:
    return x * x


def split(cb: Any, x: int) -> int:
    return x


def left(cb: Any, x: int) -> int:
    return 2 * x


def right(cb: Any, x: int) -> int:
    return 3 * x


def merge(cb: Any, a: int, b: int) -> int:
    return a + b
