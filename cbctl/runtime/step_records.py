"""Step records: what each executor ran, when, for tests and benchmarks that must tell from the executors' own
accounts whether a call waited behind another while an executor sat idle. Off unless ``$CBCTL_RECORD_STEPS``
is set in the environment of `cbctl up` (its processes inherit it); then schedulers stamp each trigger with its
dispatch time (``DISPATCHED_KEY`` in its extras) and executors append one JSON line per step to
``HOME/records/EXECUTOR.jsonl`` on their status timer. Times are ``time.monotonic()``, one clock for every
process of a machine.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cbctl.runtime.defaults import STEP_RECORDS_KEPT

#: The environment variable that turns recording on.
ENV = "CBCTL_RECORD_STEPS"
#: Key of a trigger's extras holding the scheduler's dispatch time, when recording.
DISPATCHED_KEY = "dispatched_at"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def records_dir(home: Path) -> Path:
    return Path(home) / "records"


class StepRecorder:
    """An executor's records, kept in memory between flushes (only its own thread touches it)."""

    def __init__(self, home: Path, executor_id: str) -> None:
        self.path = records_dir(home) / f"{executor_id}.jsonl"
        self.executor_id = executor_id
        self.rows: list[dict[str, Any]] = []
        self.written = 0

    def record(self, call_id: str, function: str, source: str, extras: dict[str, Any] | None, started: float,
               finished: float) -> None:
        if self.written + len(self.rows) >= STEP_RECORDS_KEPT:
            return
        dispatched = extras.get(DISPATCHED_KEY) if extras else None
        self.rows.append({"executor": self.executor_id, "call_id": call_id, "function": function,
                          "source": source, "dispatched": dispatched, "started": started, "finished": finished})

    def flush(self) -> None:
        if not self.rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write("".join(json.dumps(row) + "\n" for row in self.rows))
        self.written += len(self.rows)
        self.rows = []


def stamp(extras: dict[str, Any]) -> dict[str, Any]:
    """A trigger's extras with the dispatch time (the scheduler, when recording)."""
    return {**extras, DISPATCHED_KEY: time.monotonic()}


def read(home: Path) -> list[dict[str, Any]]:
    """Every step record of the cluster in ``home`` flushed so far."""
    rows: list[dict[str, Any]] = []
    for path in sorted(records_dir(home).glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def waited_while_idle(rows: list[dict[str, Any]], executors: Iterable[str],
                      min_wait_s: float = 0.005) -> list[dict[str, Any]]:
    """The calls (source steps with a dispatch time) that waited at least ``min_wait_s`` for their executor
    while it ran another step, and while another executor held nothing at all from the call's dispatch until
    it started (idle the whole time: the call could have run there at once). ``executors`` are the ids of
    every executor (one that ran nothing is idle throughout)."""
    by_executor: dict[str, list[tuple[float, float]]] = {e: [] for e in executors}
    ran: dict[str, list[tuple[float, float]]] = {}
    for row in rows:  # when each executor held something: from dispatch (or start) to finish
        held_from = row["dispatched"] if row["dispatched"] is not None else row["started"]
        by_executor.setdefault(row["executor"], []).append((min(held_from, row["started"]), row["finished"]))
        ran.setdefault(row["executor"], []).append((row["started"], row["finished"]))
    waited = []
    for row in rows:
        dispatched, started = row["dispatched"], row["started"]
        if row["source"] or dispatched is None or started - dispatched < min_wait_s:
            continue
        behind = any(s < started and f > dispatched for s, f in ran[row["executor"]])
        if not behind:
            continue
        idle = [e for e, spans in by_executor.items()
                if e != row["executor"] and not any(s < started and f > dispatched for s, f in spans)]
        if idle:
            waited.append({**row, "waited_s": started - dispatched, "idle": idle})
    return waited
