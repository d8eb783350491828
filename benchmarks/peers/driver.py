"""cbctl, Ray and Dask side by side, on the same machine, in the same run.

    python -m benchmarks.peers [--calls 400] [--rounds 3] [--only cbctl,ray,dask] [--plot FILE.png]
    python -m benchmarks.peers --cold-start-only [--rounds 5]

Workloads (``workloads.py``): no-op call, the chain ``square(increment(x))``, a 4-function fan-out/fan-in,
reading a 1 MB value from state, the chain with 64 calls in flight, and cold start. Each system gets 2
worker processes (cbctl: 2 executors; Ray: ``num_cpus=2``; Dask: 2 workers of 1 thread).

How the run is fair on a small machine: only one system is ever running. A round starts each system in
turn in a fresh process (which is what cold start times: from launch to its first result), warms it up,
measures every workload and stops it; the next system starts only once the previous one is gone, so no
idle cluster steals CPU from the one measured. ``--rounds`` rounds, the order of systems rotated each
round, so slow drift in the machine's load hits every system alike; each round measures ``1/rounds`` of
the calls. A peer that is not installed is skipped with a note; one that fails is reported and dropped.
``--cold-start-only`` stops each system after its first result: cold start alone, side by side, in seconds.
Before the rounds cbctl's modules and the benchmarks' are compiled to bytecode, as the peers' are by ``pip
install`` (see ``benchmarks._common.compile_bytecode``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from benchmarks._common import compile_bytecode
from benchmarks.peers import report
from benchmarks.peers.runner import READY_LINE, RESULT_PREFIX, SYSTEMS
from benchmarks.peers.workloads import IN_FLIGHT

REPO = Path(__file__).resolve().parents[2]
#: A round of one system may take ROUND_TIMEOUT_S plus ROUND_TIMEOUT_PER_CALL_S per measured call (of each
#: workload) before it is killed, so a hung peer cannot stall the run. The fixed part covers starting and
#: stopping (Ray: up to ~20 s on a loaded 2-core machine) and the warm-up; the per-call part is the slowest
#: system's (Dask: ~0.15 s per call of every workload, in_flight's 2 included) with room for a load of 6x.
ROUND_TIMEOUT_S = 120.0
ROUND_TIMEOUT_PER_CALL_S = 1.0
#: Seconds a runner gets to stop its system after SIGTERM before its process group is killed.
STOP_GRACE_S = 30.0
#: Unmeasured calls of each workload before measuring, per round (first calls load code into workers).
WARMUP_CALLS = 30
#: The in-flight workload measures this many times --calls: 800 calls at the default turn the 64-deep window
#: over 12 times, and Dask (~50 chains/s there on 2 cores) still finishes its share in ~15 s.
THROUGHPUT_FACTOR = 2
INSTALL_HINT = "pip install -e '.[bench]'"
#: Environment variable that marks every process of one round (see ``_kill_marked``).
ROUND_MARK_VARIABLE = "CBCTL_PEERS_ROUND"


class RoundFailed(RuntimeError):
    """A runner exited without a result, or ran past its deadline."""


def parse_only(text: str) -> list[str]:
    """``"cbctl,ray"`` -> ``["cbctl", "ray"]`` in the given order, refusing unknown or repeated names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown system {', '.join(unknown) or '(none)'}: "
                                         f"use a comma-separated list of {', '.join(SYSTEMS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a system is named twice in {text!r}")
    return names


def available(systems: Sequence[str], find_spec: Callable[[str], Any] | None = None
              ) -> tuple[list[str], list[str]]:
    """The systems whose package is importable (``importlib.util.find_spec`` unless given), and a note for
    each that is not."""
    find_spec = find_spec or importlib.util.find_spec
    present, notes = [], []
    for name in systems:
        package = SYSTEMS[name][2]
        if find_spec(package) is None:
            notes.append(f"{name} skipped: {package} is not installed ({INSTALL_HINT})")
        else:
            present.append(name)
    return present, notes


def split_calls(total: int, rounds: int) -> list[int]:
    """``total`` calls over ``rounds`` rounds, as evenly as possible (earlier rounds get the remainder)."""
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def rotated(systems: Sequence[str], round_index: int) -> list[str]:
    shift = round_index % len(systems) if systems else 0
    return [*systems[shift:], *systems[:shift]]


def run_round(system: str, calls: int, throughput_calls: int, warmup: int,
              timeout_s: float | None = None, cold_start_only: bool = False) -> tuple[float, dict[str, Any]]:
    """Run one round of ``system`` in a fresh process: its cold start (s, launch to first result) and its
    measurements (none with ``cold_start_only``). Raises ``RoundFailed`` with the runner's last error line."""
    if timeout_s is None:
        timeout_s = ROUND_TIMEOUT_S + ROUND_TIMEOUT_PER_CALL_S * calls
    mark = uuid.uuid4().hex  # inherited by everything the round starts, however detached (see _kill_marked)
    env = {**os.environ, ROUND_MARK_VARIABLE: mark,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "benchmarks.peers.runner", system, "--calls", str(calls),
               "--throughput-calls", str(throughput_calls), "--warmup", str(warmup)]
    if cold_start_only:
        command.append("--cold-start-only")
    with open(os.devnull, "rb") as stdin, tempfile.TemporaryFile() as stderr:
        launched = time.perf_counter()
        process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, env=env,
                                   cwd=REPO, start_new_session=True, text=True)
        cold_start_s = None
        result = None
        try:
            for line in _lines_until(process, launched + timeout_s):
                if line == READY_LINE and cold_start_s is None:
                    cold_start_s = time.perf_counter() - launched
                elif line.startswith(RESULT_PREFIX):
                    result = json.loads(line[len(RESULT_PREFIX):])
            process.wait(timeout=max(1.0, launched + timeout_s - time.perf_counter()))
        except (subprocess.TimeoutExpired, TimeoutError):
            raise RoundFailed(f"{system}: no result within {timeout_s:.0f} s") from None
        finally:
            _stop(process)
            _kill_marked(mark)
        if process.returncode != 0 or cold_start_s is None or result is None:
            stderr.seek(0)
            last = [line for line in stderr.read().decode(errors="replace").splitlines() if line.strip()]
            raise RoundFailed(f"{system}: runner exited with {process.returncode}: "
                              f"{last[-1] if last else 'no error output'}")
    return cold_start_s, result


def _lines_until(process: subprocess.Popen, deadline: float) -> Any:
    """The runner's stdout lines as they come; ``TimeoutError`` once ``deadline`` (perf_counter) passes."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError
            if not selector.select(timeout=left):
                continue
            line = process.stdout.readline()
            if not line:
                return
            yield line.rstrip("\n")


def _stop(process: subprocess.Popen) -> None:
    """Ask the runner to stop its system (SIGTERM runs its clean-up), then kill whatever of its process
    group is left (Ray's and Dask's helpers live there)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _kill_marked(mark: str) -> None:
    """Kill what a round left behind: a runner stopped while ``cbctl up`` was still starting can leave the
    detached supervisor and its children running, outside the runner's process group. They all carry the
    round's mark in their environment, and nothing else does."""
    leftovers = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(ROUND_MARK_VARIABLE) == mark:
                leftovers.append(process)
        except (psutil.Error, OSError):
            continue
    for process in leftovers:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=STOP_GRACE_S)


def machine() -> dict[str, Any]:
    """What the numbers were measured on, for the JSON line and the README."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    versions = {}
    for package in ("cbctl", "ray", "dask", "distributed", "pyzmq"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": model, "cpus": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "os": platform.platform(terse=True), "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0],
                                     epilog="example: python -m benchmarks.peers --only cbctl,ray --plot peers.png")
    parser.add_argument("--calls", type=int, default=400,
                        help="Measured calls per workload and system, spread over the rounds (in_flight: 2x).")
    parser.add_argument("--rounds", type=int, default=3,
                        help="Rounds; each starts every system afresh (one cold start each), in rotated order.")
    parser.add_argument("--only", type=parse_only, default=list(SYSTEMS),
                        help="Comma-separated systems to run (default: cbctl,ray,dask).")
    parser.add_argument("--plot", metavar="FILE.png", help="Also draw a bar chart (needs matplotlib).")
    parser.add_argument("--cold-start-only", action="store_true",
                        help="Measure cold start alone: each system stops after its first result (--calls unused).")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < args.rounds:
        parser.error("use --rounds >= 1 and --calls >= --rounds")
    return args


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"benchmark stopped by signal {signum}")  # unwinds run_round, which stops its runner


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> None:
    if args.plot:  # refused now, not after minutes of measuring
        try:
            report.require_matplotlib()
        except report.PlotUnavailable as missing:
            sys.exit(f"error: {missing}")
        folder = Path(args.plot).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            sys.exit(f"error: cannot write the chart {args.plot}: {folder} is not a writable directory")
    systems, notes = available(args.only)
    bytecode = compile_bytecode()
    measured: dict[str, dict[str, report.Samples]] = {s: {} for s in systems}
    failed: list[str] = []
    load_before = os.getloadavg()
    started = time.perf_counter()
    for round_index, calls in enumerate(split_calls(args.calls, args.rounds)):
        for system in rotated([s for s in systems if s not in failed], round_index):
            print(f"round {round_index + 1}/{args.rounds}: {system}", file=sys.stderr, flush=True)
            try:
                cold_start_s, result = run_round(system, calls, max(2 * IN_FLIGHT, THROUGHPUT_FACTOR * calls),
                                                 WARMUP_CALLS, cold_start_only=args.cold_start_only)
            except RoundFailed as error:
                notes.append(f"{error} (dropped from the remaining rounds)")
                failed.append(system)
                continue
            samples = measured[system]
            samples.setdefault("cold_start", report.Samples(elapsed_s=None)).add_block([cold_start_s], None)
            for workload, block in result.items():
                samples.setdefault(workload, report.Samples()).add_block(block["samples"], block["elapsed"])
    rows = report.build_rows(measured, systems)
    if "cbctl" not in systems or "cbctl" in failed:
        notes.append("cbctl did not run: no ratios")
    info = machine()
    extra = {"calls": 0 if args.cold_start_only else args.calls, "rounds": args.rounds, "systems": systems,
             "machine": info, "bytecode": bytecode,
             "load_avg_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
             "run_s": round(time.perf_counter() - started, 1)}
    report.print_report(rows, notes, extra)
    if args.plot and rows:
        load = extra["load_avg_1m"]
        report.plot(rows, args.plot, subtitle=f"{info['cpu']}, {info['cpus']} CPUs, {info['date']}, "
                                              f"load average {load['before']} -> {load['after']}")
        print(f"chart written to {args.plot}", file=sys.stderr)
    if "cbctl" in failed:
        sys.exit(1)
