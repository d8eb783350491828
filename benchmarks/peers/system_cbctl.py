"""The workloads on cbctl: deployed functions, DAGs for the chain and the fan, and the 1 MB value in the
store, read by the function with ``cb.get`` (served from the executor's cache after the first read). The
cluster is started as the README's "From Python" teaches, with ``cbctl.local()`` (as Dask's workloads use
``LocalCluster`` and Ray's ``ray.init()``)."""

from __future__ import annotations

import contextlib
from typing import Any

import cbctl
from benchmarks.functions import increment, left, merge, noop, right, split, square  # as benchmarks.latency times
from benchmarks.peers.workloads import STATE_BYTES

#: Executors of the cluster: one per core of the 2-core reference machine, as Ray and Dask get 2 workers.
EXECUTORS = 2
#: Seconds a call may take before the run fails (a hung call must not hang the benchmark).
CALL_TIMEOUT_S = 60.0
STATE_KEY = "peers/state"


def state_length(cb: Any, key: str) -> int:
    return len(cb.get(key))


#: Workload -> (function or DAG name, its argument given x).
_TARGETS = {
    "noop": ("noop", lambda x: x),
    "chain": ("chain", lambda x: x),
    "fan": ("fan", lambda x: x),
    "state": ("state_length", lambda x: STATE_KEY),
    "in_flight": ("chain", lambda x: x),
}


class CbctlSystem:
    name = "cbctl"

    def __init__(self) -> None:
        self._resources = contextlib.ExitStack()
        self._client: cbctl.Client | None = None

    def start(self) -> None:
        self._client = self._resources.enter_context(cbctl.local(executors=EXECUTORS))
        self._client.register(noop)

    def prepare(self) -> None:
        client = self._require_client()
        for fn in (increment, square, split, left, right, merge, state_length):
            client.register(fn)
        client.register_dag("chain", [increment, square])
        client.register_dag("fan", [split, left, right, merge],
                            edges=[(split, left), (split, right), (left, merge), (right, merge)])
        client.put(STATE_KEY, bytes(STATE_BYTES))

    def call(self, workload: str, x: int) -> Any:
        name, argument = _TARGETS[workload]
        return self._require_client().call(name, argument(x), timeout=CALL_TIMEOUT_S)

    def submit(self, workload: str, x: int) -> cbctl.CallFuture:
        name, argument = _TARGETS[workload]
        return self._require_client().call_async(name, argument(x))

    def wait(self, handle: cbctl.CallFuture) -> Any:
        return handle.result(timeout=CALL_TIMEOUT_S)

    def stop(self) -> None:
        self._client = None
        self._resources.close()

    def _require_client(self) -> cbctl.Client:
        if self._client is None:
            raise RuntimeError("cbctl system used before start()")
        return self._client
