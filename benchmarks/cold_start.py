"""Cold start, phase by phase: how long ``cbctl up`` takes to say ready, and a fresh interpreter to its first
DAG result with ``cbctl.local()``.

    python -m benchmarks.cold_start [--rounds 5] [--executors 2]

Each round runs, each in a fresh temporary home:
- ``up``: ``cbctl up --executors N --verbose`` timed from launch to exit (it exits once every process
  reported ready), then ``cbctl down`` (not timed). ``--verbose`` prints where the time went, from the
  command's own start: the CLI's interpreter and imports, its checks, the supervisor's interpreter and imports,
  the forkserver's preload, the children's start, the cluster file, the ready line. The table shows each
  phase's median over the rounds.
- ``first_dag_result``: ``python -c "import cbctl; with cbctl.local(executors=N) as c: ...register a
  2-function DAG, call it..."`` timed from launch to the line with the DAG's result (what
  ``benchmarks.peers`` calls cold start), then to exit (the cluster stopped).
The floor, ``python -c pass``, is timed in the same rounds: every figure includes one interpreter launch.
Medians are what to quote: on a loaded machine every figure moves, the floor with them.
Before the rounds cbctl's modules are compiled to bytecode, as ``pip install`` leaves them (see
``_common.compile_bytecode``): a start measures what a user waits for, not a compiler run per interpreter.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import compile_bytecode, print_report

#: What the first-result case runs: the README's "From Python" with a DAG, printed as soon as it returns.
FIRST_RESULT_SCRIPT = """
import cbctl
with cbctl.local(executors={executors}) as client:
    client.register(lambda cb, x: x + 1, name="inc")
    client.register(lambda cb, x: x * x, name="square")
    client.register_dag("inc_then_square", ["inc", "square"])
    print("RESULT", client.call("inc_then_square", 3, timeout=60), flush=True)
"""
_PHASE = re.compile(r"^\s+(?P<name>\S.*?)\s{2,}(?P<took>[0-9]+) ms\s+(?P<at>[0-9]+) ms$")


def time_up(executors: int) -> tuple[float, dict[str, float]]:
    """``cbctl up --verbose``: (seconds from launch to exit, {phase: ms}), then ``cbctl down``."""
    with tempfile.TemporaryDirectory(prefix="cbcold-") as tmp:
        env = {**os.environ, "CBCTL_HOME": str(Path(tmp) / "home")}
        command = [sys.executable, "-m", "cbctl.cli", "up", "--executors", str(executors), "--verbose"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        took = time.perf_counter() - started
        subprocess.run([sys.executable, "-m", "cbctl.cli", "down"], capture_output=True, env=env, timeout=120)
        if result.returncode != 0:
            raise SystemExit(f"cbctl up failed: {result.stderr.strip()}")
    phases = {}
    for line in result.stdout.splitlines():
        match = _PHASE.match(line)
        if match:
            phases[match["name"]] = float(match["took"])
    return took, phases


def time_first_result(executors: int) -> tuple[float, float]:
    """A fresh interpreter with ``cbctl.local()``: (s to the DAG's result line, s to exit)."""
    command = [sys.executable, "-c", FIRST_RESULT_SCRIPT.format(executors=executors)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    first = time.perf_counter() - started
    process.wait(120)
    if not line.startswith("RESULT 16"):
        raise SystemExit(f"the first-result script failed: {line!r} {process.stderr.read().strip()}")
    return first, time.perf_counter() - started


def time_floor() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cold_start", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="Rounds (each: the floor, up, a first result).")
    parser.add_argument("--executors", type=int, default=2, help="CPU executors of each cluster.")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.executors < 1:
        parser.error("use --rounds >= 1 and --executors >= 1")
    bytecode = compile_bytecode()
    load_before = os.getloadavg()[0]
    floors, ups, firsts, exits = [], [], [], []
    phases: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        floors.append(time_floor())
        took, round_phases = time_up(args.executors)
        ups.append(took)
        for name, ms in round_phases.items():
            phases.setdefault(name, []).append(ms)
        first, done = time_first_result(args.executors)
        firsts.append(first)
        exits.append(done)

    def row(case: str, samples_s: list[float]) -> dict[str, object]:
        return {"case": case, "median_ms": round(statistics.median(samples_s) * 1e3, 1),
                "min_ms": round(min(samples_s) * 1e3, 1), "max_ms": round(max(samples_s) * 1e3, 1)}

    rows = [row("python -c pass (floor)", floors), row("cbctl up (to ready, exit)", ups)]
    rows += [{"case": f"  up: {name}", "median_ms": round(statistics.median(ms), 1), "min_ms": min(ms),
              "max_ms": max(ms)} for name, ms in phases.items()]
    rows += [row("first DAG result (cbctl.local)", firsts), row("  ... and the cluster stopped", exits)]
    print_report("cold start", rows, {"rounds": args.rounds, "executors": args.executors, "cpus": os.cpu_count(),
                                      "bytecode": bytecode,
                                      "load_avg_1m": {"before": round(load_before, 2),
                                                      "after": round(os.getloadavg()[0], 2)}})


if __name__ == "__main__":
    main()
