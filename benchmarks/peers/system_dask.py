"""The workloads on Dask, written as its documentation teaches for real-time work: ``client.submit`` of
plain functions, composed by passing futures (the scheduler feeds a result to its dependents on the
workers), and the 1 MB value scattered once to every worker with ``client.scatter(..., broadcast=True)``."""

from __future__ import annotations

from typing import Any

from dask.distributed import Client, Future, LocalCluster

from benchmarks.peers.workloads import STATE_BYTES

#: Worker processes, 1 thread each: one per core of the 2-core reference machine, as cbctl gets 2 executors.
WORKERS = 2
#: Seconds a call may take before the run fails (a hung call must not hang the benchmark).
CALL_TIMEOUT_S = 60.0


def noop(x: int) -> int:
    return x


def increment(x: int) -> int:
    return x + 1


def square(x: int) -> int:
    return x * x


def split(x: int) -> int:
    return x


def left(x: int) -> int:
    return 2 * x


def right(x: int) -> int:
    return 3 * x


def merge(a: int, b: int) -> int:
    return a + b


def state_length(value: bytes) -> int:
    return len(value)


class DaskSystem:
    name = "dask"

    def __init__(self) -> None:
        self._cluster: LocalCluster | None = None
        self._client: Client | None = None
        self._state: Future | None = None

    def start(self) -> None:
        self._cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                     dashboard_address=None)
        self._client = Client(self._cluster)

    def prepare(self) -> None:
        self._state = self._require_client().scatter(bytes(STATE_BYTES), broadcast=True)

    def submit(self, workload: str, x: int) -> Future:
        # pure=False: otherwise Dask names a task by its function and arguments and hands back the result of
        # an earlier identical call instead of running it again
        submit = self._require_client().submit
        if workload == "noop":
            return submit(noop, x, pure=False)
        if workload in ("chain", "in_flight"):
            return submit(square, submit(increment, x, pure=False), pure=False)
        if workload == "fan":
            first = submit(split, x, pure=False)
            return submit(merge, submit(left, first, pure=False), submit(right, first, pure=False), pure=False)
        if workload == "state":
            return submit(state_length, self._state, pure=False)
        raise KeyError(workload)

    def call(self, workload: str, x: int) -> Any:
        return self.wait(self.submit(workload, x))

    def wait(self, handle: Future) -> Any:
        return handle.result(timeout=CALL_TIMEOUT_S)

    def stop(self) -> None:
        self._state = None
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None

    def _require_client(self) -> Client:
        if self._client is None:
            raise RuntimeError("dask system used before start()")
        return self._client
