"""Large values through calls: numpy arrays as an argument, as a result, along a 2-function chain and through
``put``/``Ref``, next to a raw pyzmq relay of the same bytes over the same hops, measured in the same run (and
Ray's tasks with the same arrays when Ray is installed: ``pip install -e ".[bench]"``).

    python -m benchmarks.bigdata [--sizes-mb 1 8 32 64] [--rounds 3] [--cases put+ref put+get] [--no-ray]
    python -m benchmarks.bigdata --threshold

Cases (a fresh 2-executor cluster in a temporary home; the relay's hops are processes of their own):
- ``argument``: ``nbytes(array)`` returns an int: the array goes client -> scheduler -> executor (relay: 2 hops of
  the array, a small reply);
- ``result``: ``make(n)`` returns ``np.ones(n)``: the array goes executor -> client (relay: its last hop makes the
  array and sends it);
- ``chain``: ``same2(same1(array))``, each returning its argument: client -> scheduler -> executor -> executor ->
  client (relay: 4 hops of the array);
- ``put+ref``: ``put(key, array)`` then ``nbytes(Ref(key))``: client -> store -> executor (relay: 2 hops);
- ``put+get``: ``put(key, array)`` then ``get(key)`` from the client: client -> store -> client (relay: 2 hops, the
  array back to the client);
- ``eph+ref``: as ``put+ref`` with ``put(key, array, durable=False)``: the store keeps it in memory, unlogged (a
  durable put also writes the value to the store's log before it is acknowledged: the disk's write speed, not
  memory's, once the kernel's dirty-page budget is spent).
Each row gives the median of ``--rounds`` x a size-dependent number of calls, cbctl and relay blocks alternating
(a loaded machine moves the floor), the ratio, MB/s, and Ray's median. The 64 MB rows also give each process's
peak resident memory during the case over its resident memory before it (``peak_rss_growth_over_value``), and the
whole peak, the interpreter's own memory included (``peak_rss_over_value``), in multiples of the value (Linux's
``VmHWM``, reset before each case, so no peak is missed between samples).

``--threshold`` measures instead where out-of-band frames start to pay (``defaults.OUT_OF_BAND_BYTES``), and where
lending through shared memory does (``shared.SHARED_MIN_BYTES``): one PUSH/PULL ipc hop of a message carrying an
array, encoded inline, out of band, and out of band with its buffer lent, from 4 KiB to 4 MiB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

import cbctl
from benchmarks._common import print_report, temp_cluster
from cbctl.runtime.cluster import ClusterFile

MB = 1 << 20
#: Calls per block by size: enough for a median, few enough for a loaded 2-core machine.
CALLS = {1: 20, 8: 8, 32: 4, 64: 3}


# --- the cluster's functions ------------------------------------------------------------------------------


def nbytes(cb: Any, array: Any) -> int:
    return int(array.nbytes)


def make(cb: Any, n: int) -> Any:
    return np.ones(n, dtype=np.uint8)


def same1(cb: Any, array: Any) -> Any:
    return array


def same2(cb: Any, array: Any) -> Any:
    return array


# --- the floor: a raw pyzmq relay -------------------------------------------------------------------------


def _hop(pull_address: str, push_address: str, out: str) -> None:
    """One relay hop: receive a message's frames into zmq's memory, send on the same frames (``forward``), a
    small reply (``small``) or a new array of the requested size (``make``): each from its memory."""
    context = zmq.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    pull.bind(pull_address)
    push.connect(push_address)
    while True:
        frames = pull.recv_multipart(copy=False)
        if frames[0].bytes == b"stop":
            break
        if out == "forward":
            push.send_multipart(frames, copy=False)
        elif out == "small":
            push.send_multipart([b"h", b"8"], copy=False)
        else:
            push.send_multipart([b"h", np.ones(int(frames[1].bytes), dtype=np.uint8).data], copy=False)
    push.send(b"stop")
    context.destroy(linger=1000)


class Relay:
    """client PUSH -> hop -> ... -> client PULL, each hop a process doing what ``hops`` says."""

    def __init__(self, directory: Path, name: str, hops: list[str]) -> None:
        addresses = [f"ipc://{directory}/{name}-{i}" for i in range(len(hops) + 1)]
        mp = multiprocessing.get_context("spawn")
        self.hops = [mp.Process(target=_hop, args=(addresses[i], addresses[i + 1], out), daemon=True)
                     for i, out in enumerate(hops)]
        self.context = zmq.Context()
        self.pull = self.context.socket(zmq.PULL)
        self.pull.bind(addresses[-1])
        self.push = self.context.socket(zmq.PUSH)
        self.push.connect(addresses[0])
        for hop in self.hops:
            hop.start()

    def call(self, payload: Any) -> Any:
        self.push.send_multipart([b"h", payload], copy=False)
        frames = self.pull.recv_multipart(copy=False)
        return np.frombuffer(frames[1], dtype=np.uint8)

    def close(self) -> None:
        self.push.send(b"stop")
        for hop in self.hops:
            hop.join(timeout=10)
            if hop.is_alive():
                hop.kill()
        self.context.destroy(linger=0)


RELAY_HOPS = {"argument": ["forward", "small"], "result": ["forward", "make"],
              "chain": ["forward", "forward", "forward"], "put+ref": ["forward", "small"], "put+get": ["forward"],
              "eph+ref": ["forward", "small"]}


# --- measuring --------------------------------------------------------------------------------------------


def timed(call: Callable[[], Any], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


class PeakMemory:
    """Each process's peak resident memory over a case, against its resident memory before it (Linux's VmHWM,
    reset through ``clear_refs``, which catches a peak sampling would miss)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, int] = {}

    def start(self) -> None:
        for name, pid in self.pids.items():
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.before[name] = psutil.Process(pid).memory_info().rss

    def peaks(self, value_bytes: int) -> dict[str, float]:
        out = {}
        self.absolute: dict[str, float] = {}
        for name, pid in self.pids.items():
            status = Path(f"/proc/{pid}/status").read_text()
            hwm = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) << 10
            out[name] = round((hwm - self.before[name]) / value_bytes, 2)
            self.absolute[name] = round(hwm / value_bytes, 2)  # the whole peak, the interpreter's own included
        return out


def cbctl_cases(client: cbctl.Client, array: np.ndarray) -> dict[str, Callable[[], Any]]:
    size = array.nbytes

    def argument() -> None:
        assert client.call("nbytes", array) == size

    def result() -> None:
        assert client.call("make", size).nbytes == size

    def chain() -> None:
        assert client.call("chain", array).nbytes == size

    def put_ref() -> None:
        client.put("bigdata-value", array)
        assert client.call("nbytes", cbctl.Ref("bigdata-value")) == size

    def put_get() -> None:
        client.put("bigdata-got", array)
        assert client.get("bigdata-got").nbytes == size

    def eph_ref() -> None:
        client.put("bigdata-eph", array, durable=False)
        assert client.call("nbytes", cbctl.Ref("bigdata-eph")) == size

    return {"argument": argument, "result": result, "chain": chain, "put+ref": put_ref, "put+get": put_get,
            "eph+ref": eph_ref}


def relay_cases(relays: dict[str, Relay], array: np.ndarray) -> dict[str, Callable[[], Any]]:
    size = array.nbytes
    buffer = array.data
    return {"argument": lambda: relays["argument"].call(buffer),
            "result": lambda: relays["result"].call(str(size).encode()),
            "chain": lambda: relays["chain"].call(buffer),
            "put+ref": lambda: relays["put+ref"].call(buffer),
            "put+get": lambda: relays["put+get"].call(buffer),
            "eph+ref": lambda: relays["eph+ref"].call(buffer)}


def ray_cases(array: np.ndarray) -> dict[str, Callable[[], Any]] | None:
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=1 << 30)
    size = array.nbytes
    r_nbytes = ray.remote(lambda a: int(a.nbytes))
    r_make = ray.remote(lambda n: np.ones(n, dtype=np.uint8))
    r_same1, r_same2 = ray.remote(lambda a: a), ray.remote(lambda a: a)
    return {"argument": lambda: ray.get(r_nbytes.remote(array)) == size,
            "result": lambda: ray.get(r_make.remote(size)).nbytes == size,
            "chain": lambda: ray.get(r_same2.remote(r_same1.remote(array))).nbytes == size,
            "put+ref": lambda: ray.get(r_nbytes.remote(ray.put(array))) == size,
            "put+get": lambda: ray.get(ray.put(array)).nbytes == size,
            "eph+ref": lambda: ray.get(r_nbytes.remote(ray.put(array))) == size}


def run(sizes_mb: list[int], rounds: int, use_ray: bool, cases: list[str] | None = None) -> None:
    rows: list[dict[str, Any]] = []
    memory: dict[str, dict[str, float]] = {}
    absolute: dict[str, dict[str, float]] = {}
    # a value's limit is on its serialised size: a 64 MB array is 64 MB and a few bytes of header
    limit = ["--max-message-mb", str(max(sizes_mb) + 1)]
    with temp_cluster(2, limit) as home, tempfile.TemporaryDirectory(prefix="cbbig-") as tmp:
        client = cbctl.connect(home)
        for fn in (nbytes, make, same1, same2):
            client.register(fn)
        client.register_dag("chain", [same1, same2])
        found = ClusterFile.read(home)
        pids = {f"{p.role}-{p.index}": p.pid for p in found.processes if p.role != "supervisor"} if found else {}
        pids["client"] = os.getpid()
        relays = {case: Relay(Path(tmp), case.replace("+", ""), hops) for case, hops in RELAY_HOPS.items()}
        try:
            for mb in sizes_mb:
                array = np.ones(mb * MB, dtype=np.uint8)
                n = CALLS.get(mb, 3)
                ours, floor = cbctl_cases(client, array), relay_cases(relays, array)
                theirs = ray_cases(array) if use_ray else None
                for case in cases or list(ours):
                    ours[case]()  # warm: first call loads the function, allocates the cache
                    samples: dict[str, list[float]] = {"cbctl": [], "relay": [], "ray": []}
                    meter = PeakMemory(pids) if mb == max(sizes_mb) else None
                    for _ in range(rounds):
                        if meter is not None and not samples["cbctl"]:
                            meter.start()
                        samples["cbctl"] += timed(ours[case], n)
                        if meter is not None and case not in memory:
                            memory[case] = meter.peaks(array.nbytes)
                            absolute[case] = meter.absolute
                        samples["relay"] += timed(floor[case], n)
                        if theirs is not None:
                            samples["ray"] += timed(theirs[case], n)
                    rows.append(row(case, mb, samples))
        finally:
            for relay in relays.values():
                relay.close()
            client.close()
    extra: dict[str, Any] = {"peak_rss_growth_over_value": memory, "peak_rss_over_value": absolute}
    if use_ray and not any("ray_ms" in r for r in rows):
        extra["ray"] = "not installed: pip install -e '.[bench]' for its column"
    print_report("bigdata", rows, extra)
    for case, peaks in memory.items():
        print(f"peak RSS growth, {case}, in multiples of the {max(sizes_mb)} MB value: {peaks}; whole peak RSS: "
              f"{absolute[case]}")


def row(case: str, mb: int, samples: dict[str, list[float]]) -> dict[str, Any]:
    ours, floor = statistics.median(samples["cbctl"]), statistics.median(samples["relay"])
    out: dict[str, Any] = {"case": case, "MB": mb, "cbctl_ms": round(ours * 1e3, 1),
                           "relay_ms": round(floor * 1e3, 1), "x_relay": round(ours / floor, 2),
                           "cbctl_MB_per_s": round(mb / ours)}
    if samples["ray"]:
        theirs = statistics.median(samples["ray"])
        out["ray_ms"] = round(theirs * 1e3, 1)
        out["x_ray"] = round(ours / theirs, 2)
    return out


# --- where out of band starts to pay -----------------------------------------------------------------------


def threshold() -> None:
    from cbctl.runtime.process import Receiver, send_message
    from cbctl.runtime.wire import serialization, shared
    from cbctl.runtime.wire.messages import CallResult, unpack

    rows = []
    context = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="cbbig-") as tmp:
        pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
        pull.bind(f"ipc://{tmp}/t")
        push.connect(f"ipc://{tmp}/t")
        receiver = Receiver(pull)
        default = serialization.OUT_OF_BAND_BYTES
        shared_default = shared.SHARED_MIN_BYTES
        try:
            for kib in (4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096):
                array = np.ones(kib << 10, dtype=np.uint8)
                medians = {}
                for form, limit in (("inline", 1 << 40), ("out_of_band", 0), ("shared", 0)):
                    serialization.OUT_OF_BAND_BYTES = limit

                    def hop(array: np.ndarray = array, lend: bool = form == "shared") -> None:
                        packed = CallResult("c-1", True, serialization.encode(array)).pack()
                        send_message(push, shared.export(packed) if lend else packed)
                        (message,) = receiver.receive(1000)
                        serialization.decode(unpack(message).value)

                    shared.SHARED_MIN_BYTES = 0
                    timed(hop, 200)
                    medians[form] = statistics.median(timed(hop, 2000)) * 1e6
                rows.append({"KiB": kib, "inline_us": round(medians["inline"], 1),
                             "out_of_band_us": round(medians["out_of_band"], 1),
                             "shared_memory_us": round(medians["shared"], 1),
                             "out_of_band_pays": medians["out_of_band"] < medians["inline"],
                             "shared_memory_pays": medians["shared"] < min(medians["inline"], medians["out_of_band"])})
        finally:
            serialization.OUT_OF_BAND_BYTES = default
            shared.SHARED_MIN_BYTES = shared_default
            shared.close_pool()
            context.destroy(linger=0)
    print_report("bigdata-threshold", rows, {"OUT_OF_BAND_BYTES": default, "SHARED_MIN_BYTES": shared_default})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=list(RELAY_HOPS), help="only these cases (default: all)")
    parser.add_argument("--no-ray", action="store_true", help="leave Ray's column out even when it is installed")
    parser.add_argument("--threshold", action="store_true", help="measure where out-of-band frames start to pay")
    args = parser.parse_args()
    if args.threshold:
        threshold()
    else:
        run(args.sizes_mb, args.rounds, not args.no_ray, args.cases)


if __name__ == "__main__":
    main()
