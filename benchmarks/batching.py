"""Throughput of a vectorised numpy function with and without batching, with 64 calls in flight.

    python -m benchmarks.batching [--calls 3000] [--in-flight 64] [--dim 1024] [--executors 1] [--max-batch 10]

The function is one dense layer, ``W @ x`` with a ``dim x dim`` float32 ``W`` built once per executor (a class
with ``run``): unbatched, every call streams all of ``W`` through memory for one vector; batched, one
invocation multiplies the stacked vectors of up to ``--max-batch`` queued calls with one read of ``W``, which is
what batching buys a model's forward pass (and the executor also runs one loop turn per batch, not per
call). Each call sends a ``dim``-float32 numpy vector and gets back
``[checksum, batch size]``. The same run measures two floors: the layer itself in-process (per vector and
per batch of ``--max-batch``), and a raw pyzmq DEALER/ROUTER echo of the same payload with the same number of
messages in flight, so the cluster's numbers can be read against what the machine can do at all.
"""

from __future__ import annotations

import os

# One BLAS thread per process, set before numpy loads (the executors inherit it through `cbctl up`): on a small
# machine the executor shares its cores with the client, scheduler and store, and BLAS threads spinning against
# them would be what this measured (about 4x slower batched products on 2 cores).
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import cloudpickle  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402

import cbctl  # noqa: E402
from benchmarks._common import print_report, temp_cluster  # noqa: E402


class Layer:
    """One dense layer, constructed once per executor; ``run`` serves one call."""

    def __init__(self, dim: int) -> None:
        self.weights = np.random.default_rng(0).standard_normal((dim, dim), dtype=np.float32)

    def run(self, cb: Any, x: np.ndarray) -> list[float]:
        return [float((self.weights @ x).sum()), 1]


class BatchedLayer(Layer):
    """The same layer with ``batching=True``: ``xs`` holds one vector per queued call."""

    def run(self, cb: Any, xs: list[np.ndarray]) -> list[list[float]]:
        sums = (np.stack(xs) @ self.weights.T).sum(axis=1)
        return [[float(s), len(xs)] for s in sums]


def drive(client: cbctl.Client, name: str, vector: np.ndarray, calls: int, in_flight: int) -> dict[str, Any]:
    """``calls`` calls of ``name`` keeping ``in_flight`` outstanding; throughput and mean batch size."""
    pending: collections.deque[cbctl.CallFuture] = collections.deque()
    batch_total = 0
    started = time.perf_counter()
    for _ in range(calls):
        if len(pending) >= in_flight:
            batch_total += pending.popleft().result(timeout=60)[1]
        pending.append(client.call_async(name, vector))
    while pending:
        batch_total += pending.popleft().result(timeout=60)[1]
    elapsed = time.perf_counter() - started
    return {"calls_per_s": round(calls / elapsed, 1), "mean_batch": round(batch_total / calls, 2),
            "wall_s": round(elapsed, 3)}


def layer_floor(dim: int, calls: int, batch: int) -> tuple[float, float]:
    """Calls per second of the layer alone, in-process: one vector per product, then ``batch`` per product."""
    layer, vector = Layer(dim), np.ones(dim, dtype=np.float32)
    batched_layer, vectors = BatchedLayer(dim), [vector] * batch
    for _ in range(100):  # warm-up: page in the weights, let the CPU clock up
        layer.run(None, vector)
        batched_layer.run(None, vectors)
    started = time.perf_counter()
    for _ in range(calls):
        layer.run(None, vector)
    single = calls / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(calls // batch):
        batched_layer.run(None, vectors)
    return single, (calls // batch) * batch / (time.perf_counter() - started)


def zmq_floor(payload: bytes, messages: int, in_flight: int) -> float:
    """Round trips per second of a raw pyzmq DEALER -> ROUTER echo (another thread) with ``in_flight``
    messages outstanding."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def echo() -> None:
        for _ in range(messages):
            router.send_multipart(router.recv_multipart())

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    started = time.perf_counter()
    sent = received = 0
    while received < messages:
        while sent < messages and sent - received < in_flight:
            dealer.send(payload)
            sent += 1
        dealer.recv()
        received += 1
    elapsed = time.perf_counter() - started
    thread.join(5)
    dealer.close(0)
    router.close(0)
    context.term()
    return messages / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per case")
    parser.add_argument("--in-flight", type=int, default=64, help="calls outstanding at once")
    parser.add_argument("--dim", type=int, default=1024, help="the layer is dim x dim float32")
    parser.add_argument("--executors", type=int, default=1, help="CPU executors in the cluster")
    parser.add_argument("--max-batch", type=int, default=10, help="cbctl up --max-batch")
    args = parser.parse_args(argv)
    if __name__ != "__main__":
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors need not import benchmarks/
    vector = np.ones(args.dim, dtype=np.float32)
    rows: list[dict[str, Any]] = []
    single, batched = layer_floor(args.dim, min(args.calls, 2000), args.max_batch)
    rows.append({"case": "floor: layer in-process, 1 vector per product", "calls_per_s": round(single, 1)})
    rows.append({"case": f"floor: layer in-process, {args.max_batch} vectors per product",
                 "calls_per_s": round(batched, 1)})
    rows.append({"case": f"floor: raw pyzmq echo, {args.in_flight} in flight",
                 "calls_per_s": round(zmq_floor(vector.tobytes(), args.calls, args.in_flight), 1)})
    extra = ("--max-batch", str(args.max_batch))
    with temp_cluster(args.executors, extra) as home, cbctl.connect(home) as client:
        client.register(Layer, name="layer", init_args=(args.dim,))
        client.register(BatchedLayer, name="layer_batched", batching=True, init_args=(args.dim,))
        for name, label in (("layer", "cbctl, batching off"), ("layer_batched", "cbctl, batching on")):
            drive(client, name, vector, min(300, args.calls), args.in_flight)  # warm-up: load, caches
            rows.append({"case": label, **drive(client, name, vector, args.calls, args.in_flight)})
    off, on = rows[-2]["calls_per_s"], rows[-1]["calls_per_s"]
    print_report("batching: dense layer throughput", rows, {
        "calls": args.calls, "in_flight": args.in_flight, "dim": args.dim, "executors": args.executors,
        "max_batch": args.max_batch, "speedup": round(on / off, 2) if off else None,
    })


if __name__ == "__main__":
    main()
