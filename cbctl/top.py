"""``cbctl top`` and the health summary of ``cbctl status``: one snapshot of the cluster, rendered.

The snapshot itself (asking every process, the ``--json`` document) is ``snapshot.py``; here ``render`` draws
it with rich and ``run_live`` redraws it until q or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cbctl.errors import ClusterNotRunning, InvalidArgument
from cbctl.runtime.defaults import TOP_REQUEST_TIMEOUT_S
from cbctl.snapshot import SORT_KEYS, ClusterProbe, build_snapshot, health

# --- rendering ---------------------------------------------------------------------------------------------


def _na(value: Any, fmt: str = "{}") -> str:
    return "n/a" if value is None else fmt.format(value)


def format_duration_us(us: float | None) -> str:
    if us is None:
        return "n/a"
    if us < 1000:
        return f"{us:.0f} us"
    if us < 1_000_000:
        return f"{us / 1000:.1f} ms"
    return f"{us / 1e6:.2f} s"


def format_bytes(count: float | None) -> str:
    if count is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # unreachable


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def utilization_bar(value: float | None, width: int = 10) -> Text:
    if value is None:
        return Text("n/a", style="dim")
    filled = max(0, min(width, round(value * width)))
    style = "green" if value < 0.5 else "yellow" if value < 0.85 else "red"
    bar = Text("█" * filled, style=style)
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {value * 100:3.0f}%")
    return bar


STATE_STYLES = {"ready": "green", "backoff": "yellow", "draining": "yellow", "silent": "red", "starting": "cyan",
                "dead": "bold red"}


def header_text(snapshot: Mapping[str, Any]) -> Text:
    totals, processes = snapshot["totals"], snapshot["processes"]
    text = Text()
    text.append("cbctl ", style="bold")
    text.append(f"{snapshot['home']}  up {format_uptime(snapshot['uptime_s'])}  ")
    text.append(f"processes {processes['up']}/{processes['total']} up  restarts {processes['restarts']}  ",
                style=None if processes["up"] == processes["total"] else "yellow")
    text.append(f"calls/s {totals['calls_per_s']:.1f} (DAG {totals['dag_calls_per_s']:.1f})  ")
    text.append(f"errors/s {totals['errors_per_s']:.1f}  ", style="red" if totals["errors_per_s"] else None)
    text.append(f"in flight {_na(totals['in_flight'], '{:.1f}')}")
    silent = [s["id"] for s in snapshot["schedulers"] if not s["answered"]]
    if silent:
        text.append(f"  not answering: {', '.join(silent)}", style="bold red")
    return text


def autoscale_text(snapshot: Mapping[str, Any]) -> Text | None:
    """The autoscaler's line: range, target, executors running, decisions so far and the last one."""
    state = snapshot.get("autoscale")
    if not state or not (state.get("enabled") or state.get("scale_ups") or state.get("scale_downs")):
        return None
    counts = f"ups {state.get('scale_ups', 0)} downs {state.get('scale_downs', 0)}"
    if not state.get("enabled"):
        return Text(f"autoscale  off  {state['executors']} CPU executors fixed  {counts}")
    text = Text(f"autoscale  {state['min']}:{state['max']}  target {state['target']}  running {state['executors']}"
                + (f" (+{state['departing']} departing)" if state.get("departing") else "") + f"  {counts}")
    figures = state.get("figures")
    if figures:
        text.append(f"  need {figures['need']:.1f} (busy {figures['busy']:.2f} queued {figures['queued']} "
                    f"parked {figures['parked']})")
    last = state.get("last_decision")
    if last:
        text.append(f"  last {last['from']}->{last['to']} {last['age_s']:.0f}s ago", style="dim")
    return text


def store_text(snapshot: Mapping[str, Any]) -> Text:
    store = snapshot["store"]
    if store is None:
        return Text("store  not answering", style="bold red")
    ephemeral = ""
    if store.get("ephemeral_keys"):  # shown once there are any: most clusters never make one
        ephemeral = f"ephemeral {store['ephemeral_keys']} keys {format_bytes(store['ephemeral_bytes'])}  "
    return Text(f"store  {_na(store['keys'])} keys  {format_bytes(store['bytes'])}  {ephemeral}"
                f"log {format_bytes(store['log_bytes'])}  {_na(store['ops_per_s'], '{:.1f}')} ops/s")


def health_lines(snapshot: Mapping[str, Any]) -> list[Text]:
    """The health summary ``cbctl status`` prints: the header, executor states and load, the store."""
    summary = health(snapshot)
    states = ", ".join(f"{count} {state}" for state, count in summary["executor_states"].items() if count)
    load = Text(f"executors  {states or 'none'}  utilization mean "
                f"{_na(summary['utilization_mean'], '{:.0%}')} max {_na(summary['utilization_max'], '{:.0%}')}")
    return [header_text(snapshot), load, *hosts_lines(snapshot), store_text(snapshot)]


def hosts_lines(snapshot: Mapping[str, Any]) -> list[Text]:
    """One line per host, once more than one takes part (``cbctl join``): executors by state, load, heartbeat."""
    if len(snapshot["hosts"]) < 2:
        return []
    lines = []
    for h in snapshot["hosts"]:
        states = ", ".join(f"{count} {state}" for state, count in h["states"].items()) or "no executors"
        beat = "head" if h["head"] else f"heartbeat {_na(h['heartbeat_age_s'], '{:.1f}')} s ago"
        lines.append(Text(f"host {h['host']}  {states}  utilization mean {_na(h['utilization_mean'], '{:.0%}')}  "
                          f"calls/s {h['calls_per_s']:.1f}  {beat}"))
    return lines


def _gpu_cell(executor: Mapping[str, Any]) -> str:
    gpu = executor["gpu"]
    if executor["type"] != "gpu":
        return "-"
    if not gpu or gpu.get("utilization") is None:
        return "n/a"
    memory = ""
    if gpu.get("memory_used_bytes") is not None and gpu.get("memory_total_bytes"):
        memory = f" {format_bytes(gpu['memory_used_bytes'])}/{format_bytes(gpu['memory_total_bytes'])}"
    return f"{gpu['utilization'] * 100:.0f}%{memory}"


#: Console width from which the executors table shows every column; narrower, it keeps the essentials.
WIDE_COLUMNS = 150


def _table(title: str) -> Table:
    # no vertical rules and one space between columns: the tables must fit 80 columns when narrow
    return Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                 padding=(0, 1, 0, 0), show_edge=False)


def executors_table(snapshot: Mapping[str, Any], sort: str, wide: bool = True) -> Table:
    rows = list(snapshot["executors"])
    if sort == "util":
        rows.sort(key=lambda e: -(e["utilization"] or 0.0))
    elif sort == "calls":
        rows.sort(key=lambda e: -(e["calls_per_s"] or 0.0))
    several_hosts = len(snapshot.get("hosts", ())) > 1
    columns = [("id", "left", True), *([("host", "left", True)] if several_hosts else []),
               ("type", "left", True), ("pid", "right", False),
               ("utilization", "left", True), ("call/dag/pin%", "right", False), ("CPU%", "right", True),
               ("RSS", "right", False), ("GPU", "right", True), ("pinned", "left", False), ("queue", "right", True),
               ("calls/s", "right", True), ("p50", "right", True), ("p99", "right", True),
               ("restarts", "right", False), ("state", "left", True)]
    shown = [(name, justify) for name, justify, essential in columns if wide or essential]
    table = _table("executors")
    for name, justify in shown:
        table.add_column(name, justify=justify, no_wrap=name != "pinned")
    for e in rows:
        busy = e["busy"]
        cells = {
            "id": e["id"], "host": e["host"] or "-", "type": e["type"].upper(), "pid": str(e["pid"]),
            "utilization": utilization_bar(e["utilization"], 10 if wide else 6),
            "call/dag/pin%": "n/a" if not busy else "/".join(f"{busy.get(a, 0) * 100:.0f}"
                                                             for a in ("call", "dag", "pin")),
            "CPU%": _na(e["cpu_percent"], "{:.0f}"), "RSS": format_bytes(e["rss_bytes"]), "GPU": _gpu_cell(e),
            "pinned": ", ".join(e["pinned"]) or "-", "queue": _na(e["queue"]),
            "calls/s": _na(e["calls_per_s"], "{:.1f}"), "p50": format_duration_us(e["p50_us"]),
            "p99": format_duration_us(e["p99_us"]), "restarts": _restarts_cell(e),
            "state": Text(e["state"], style=STATE_STYLES.get(e["state"], "")),
        }
        table.add_row(*[cells[name] for name, _ in shown])
    return table


def functions_table(snapshot: Mapping[str, Any], sort: str) -> Table:
    functions = list(snapshot["functions"])
    dags = list(snapshot["dags"])
    if sort in ("util", "calls"):
        functions.sort(key=lambda f: -f["calls_per_s"])
        dags.sort(key=lambda d: -d["calls_per_s"])
    table = _table("functions and DAGs")
    for column, justify in (("name", "left"), ("kind", "left"), ("calls", "right"), ("calls/s", "right"),
                            ("errors", "right"), ("queue", "right"), ("p50", "right"), ("p99", "right"),
                            ("where", "left")):
        table.add_column(column, justify=justify, no_wrap=column != "where")
    for f in functions:
        where = ", ".join(f["pinned_on"]) if f["pinned_on"] else ", ".join(sorted(f["ran_on"])) or "-"
        table.add_row(f["name"], "fn GPU" if f["gpu"] else "fn", str(f["calls"]), f"{f['calls_per_s']:.1f}",
                      Text(str(f["errors"]), style="red" if f["errors"] else ""), str(f["queue"]),
                      format_duration_us(f["p50_us"]), format_duration_us(f["p99_us"]), where)
    for d in dags:
        table.add_row(d["name"], "DAG", str(d["calls"]), f"{d['calls_per_s']:.1f}", "-", "-", "-", "-",
                      ", ".join(d["functions"]))
    return table


def render(snapshot: Mapping[str, Any], sort: str = "util", footer: str = "", width: int = WIDE_COLUMNS) -> Group:
    """The whole screen of ``cbctl top`` for one snapshot, for a console ``width`` columns wide."""
    scaling = autoscale_text(snapshot)
    parts: list[Any] = [header_text(snapshot), *hosts_lines(snapshot), *([scaling] if scaling else []),
                        executors_table(snapshot, sort, wide=width >= WIDE_COLUMNS),
                        functions_table(snapshot, sort), store_text(snapshot)]
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


# --- the live view -------------------------------------------------------------------------------------------


class KeyReader:
    """Reads single keys from a terminal stdin on a thread, without blocking the refresh loop; sets
    ``quit`` on q. cbreak mode keeps signals on, so Ctrl-C still raises KeyboardInterrupt in the main
    thread; the terminal's previous mode is restored on exit, whatever happened."""

    def __init__(self) -> None:
        self.quit = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: Any = None
        self._fd = -1

    def __enter__(self) -> KeyReader:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            return self
        if not os.isatty(fd):
            return self  # piped or detached: Ctrl-C (or the cluster going away) ends the view
        import termios
        import tty

        self._fd, self._saved = fd, termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._thread = threading.Thread(target=self._read, name="cbctl-top-keys", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if ready:
                key = os.read(self._fd, 1)
                if key in (b"q", b"Q") or not key:
                    self.quit.set()
                    return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)


@contextlib.contextmanager
def _cluster_went_away(home: Path) -> Iterator[None]:
    try:
        yield
    except ClusterNotRunning as exc:
        raise ClusterNotRunning(f"the cluster in {home} went away: {exc}") from None


def run_live(home: Path, interval: float, sort: str, console: Console) -> None:
    """Redraw the snapshot every ``interval`` seconds until q or Ctrl-C (returns normally) or until the
    cluster goes away (raises ``ClusterNotRunning`` after the terminal is restored)."""
    if sort not in SORT_KEYS:
        raise InvalidArgument(f"sort key {sort!r} is not one of {', '.join(SORT_KEYS)}")
    if interval <= 0:
        raise InvalidArgument(f"--interval {interval} must be positive (seconds between refreshes)")
    probe = ClusterProbe(home, timeout_s=max(TOP_REQUEST_TIMEOUT_S, interval))
    try:
        snapshot = build_snapshot(probe.collect())  # nothing running: fail before taking over the screen
        update = 1

        def screen() -> Group:
            return render(snapshot, sort, f"q quits  sorted by {sort}  every {interval:g} s  update {update}",
                          console.width)

        with KeyReader() as keys, Live(screen(), console=console, screen=True, auto_refresh=False,
                                       redirect_stdout=False, redirect_stderr=False) as live, \
                _cluster_went_away(home):
            while not keys.quit.wait(interval):
                snapshot = build_snapshot(probe.collect())
                update += 1
                live.update(screen(), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        probe.close()


def _restarts_cell(executor: Mapping[str, Any]) -> str:
    """Restarts, with how many were recycles over --executor-memory-mb: "3 (2 mem)"."""
    recycles = executor.get("recycles")
    return f"{executor['restarts']} ({recycles} mem)" if recycles else str(executor["restarts"])


def run_snapshots(home: Path, interval: float, sort: str, console: Console, count: int | None = None) -> None:
    """``cbctl top`` when stdout is not a terminal (a pipe, a file, a CI log), like ``top -b``: print one
    snapshot every ``interval`` seconds, one after the other, until Ctrl-C, a closed pipe, ``count`` snapshots,
    or the cluster going away (``ClusterNotRunning``). Nothing in it redraws or takes over a screen."""
    if sort not in SORT_KEYS:
        raise InvalidArgument(f"sort key {sort!r} is not one of {', '.join(SORT_KEYS)}")
    probe = ClusterProbe(home, timeout_s=max(TOP_REQUEST_TIMEOUT_S, interval))
    update = 0
    try:
        with _cluster_went_away(home):
            while count is None or update < count:
                if update:
                    time.sleep(interval)
                update += 1
                snapshot = build_snapshot(probe.collect())
                console.print(render(snapshot, sort, f"snapshot {update}  every {interval:g} s  Ctrl-C ends",
                                     console.width))
                console.file.flush()
    except KeyboardInterrupt:
        pass
    finally:
        probe.close()
