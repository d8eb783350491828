"""One round of one system, in a fresh process: ``python -m benchmarks.peers.runner SYSTEM [options]``.

The driver starts this process and times it from launch to the ``READY`` line, which is printed once the
system's first ``noop`` result is in: that is the cold start (interpreter, import, cluster start, first
call). Then the runner deploys the rest, warms every workload up, measures them in order and prints one
``RESULT`` line (JSON: per workload, latencies in seconds and the wall time of the block), and stops the
system, also on SIGTERM, so nothing it started outlives it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
from typing import Any

from benchmarks.peers.workloads import IN_FLIGHT, SEQUENTIAL, System, sequential, windowed

READY_LINE = "PEERS-READY"
RESULT_PREFIX = "PEERS-RESULT "

#: System name -> (module, class, the package that must be installed for it).
SYSTEMS: dict[str, tuple[str, str, str]] = {
    "cbctl": ("benchmarks.peers.system_cbctl", "CbctlSystem", "cbctl"),
    "ray": ("benchmarks.peers.system_ray", "RaySystem", "ray"),
    "dask": ("benchmarks.peers.system_dask", "DaskSystem", "distributed"),
}


def load_system(name: str) -> System:
    module, cls, _package = SYSTEMS[name]
    return getattr(importlib.import_module(module), cls)()


def run_round(system: System, calls: int, throughput_calls: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Warm every workload up, then measure each; returns ``{workload: {"samples": [s...], "elapsed": s}}``."""
    for workload in SEQUENTIAL:
        sequential(system, workload, range(warmup))
    windowed(system, "in_flight", range(2 * IN_FLIGHT))
    measured: dict[str, dict[str, Any]] = {}
    for workload in SEQUENTIAL:
        samples, elapsed = sequential(system, workload, range(calls))
        measured[workload] = {"samples": samples, "elapsed": elapsed}
    samples, elapsed = windowed(system, "in_flight", range(throughput_calls))
    measured["in_flight"] = {"samples": samples, "elapsed": elapsed}
    return measured


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"runner stopped by signal {signum}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One round of one system (started by benchmarks.peers).")
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--calls", type=int, required=True, help="Measured calls per sequential workload.")
    parser.add_argument("--throughput-calls", type=int, required=True, help="Measured calls kept 64 in flight.")
    parser.add_argument("--warmup", type=int, required=True, help="Unmeasured calls per workload first.")
    parser.add_argument("--cold-start-only", action="store_true",
                        help="Stop after the first result: no workload is measured (the RESULT line is empty).")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    system = load_system(args.system)
    try:
        system.start()
        if system.call("noop", 0) != 0:
            raise SystemExit(f"{args.system}: the first noop call returned a wrong result")
        print(READY_LINE, flush=True)
        measured = {}
        if not args.cold_start_only:
            system.prepare()
            measured = run_round(system, args.calls, args.throughput_calls, args.warmup)
    finally:
        system.stop()
    print(RESULT_PREFIX + json.dumps(measured), flush=True)


if __name__ == "__main__":
    sys.exit(main())
