"""The workloads on Ray, written as its documentation teaches: ``@ray.remote`` tasks composed by passing
ObjectRefs (Ray resolves them before the downstream task runs, without a round trip to the driver), and,
for the stateful function, an actor: the 1 MB value is put once in the object store with ``ray.put`` and
handed to the actor, which keeps it as its state and answers each call from memory. That is Ray's fastest
idiom for it, and the fair match for cbctl (the executor's cache) and Dask (scattered to every worker);
a task given the ObjectRef on every call instead deserialises the value from the object store each time
(about 1 ms more per call on the 2-core reference machine)."""

from __future__ import annotations

from typing import Any

import ray

from benchmarks.peers.workloads import STATE_BYTES

#: Logical CPUs Ray may use: 2, so it runs 2 worker processes, as cbctl gets 2 executors and Dask 2 workers.
NUM_CPUS = 2
#: Object store size (bytes): far more than the 1 MB value needs, and far less than Ray's default of 30% of
#: RAM, which would take shared memory from the other systems on a small machine.
OBJECT_STORE_BYTES = 256 << 20
#: Seconds a call may take before the run fails (a hung call must not hang the benchmark).
CALL_TIMEOUT_S = 60.0


@ray.remote
def noop(x: int) -> int:
    return x


@ray.remote
def increment(x: int) -> int:
    return x + 1


@ray.remote
def square(x: int) -> int:
    return x * x


@ray.remote
def split(x: int) -> int:
    return x


@ray.remote
def left(x: int) -> int:
    return 2 * x


@ray.remote
def right(x: int) -> int:
    return 3 * x


@ray.remote
def merge(a: int, b: int) -> int:
    return a + b


@ray.remote
class StateHolder:
    """A stateful function: holds a value (resolved from its ObjectRef once, at construction)."""

    def __init__(self, value: bytes) -> None:
        self.value = value

    def length(self) -> int:
        return len(self.value)


class RaySystem:
    name = "ray"

    def __init__(self) -> None:
        self._state: Any = None  # the StateHolder actor's handle

    def start(self) -> None:
        ray.init(num_cpus=NUM_CPUS, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")

    def prepare(self) -> None:
        self._state = StateHolder.remote(ray.put(bytes(STATE_BYTES)))

    def submit(self, workload: str, x: int) -> ray.ObjectRef:
        if workload == "noop":
            return noop.remote(x)
        if workload in ("chain", "in_flight"):
            return square.remote(increment.remote(x))
        if workload == "fan":
            first = split.remote(x)
            return merge.remote(left.remote(first), right.remote(first))
        if workload == "state":
            return self._state.length.remote()
        raise KeyError(workload)

    def call(self, workload: str, x: int) -> Any:
        return self.wait(self.submit(workload, x))

    def wait(self, handle: ray.ObjectRef) -> Any:
        return ray.get(handle, timeout=CALL_TIMEOUT_S)

    def stop(self) -> None:
        self._state = None
        ray.shutdown()
