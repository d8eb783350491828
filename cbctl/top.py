"""``cbctl top`` and the health summary of ``cbctl status``: one snapshot of the cluster, rendered.

A snapshot asks every process kind at once, with one short deadline: the supervisor (processes, pids,
restarts), every scheduler (executor statuses with their metrics, call rates, policy state) and the store
(keys, bytes, log size, ops/s). ``build_snapshot`` turns the answers into the stable JSON documented in the
README ("cbctl top --json"); ``render`` draws it with rich; ``run_live`` redraws it until q or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import zmq
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cbctl.errors import CbctlError, ClusterNotRunning, InvalidArgument, ProtocolError
from cbctl.runtime import auth, cluster
from cbctl.runtime.defaults import TOP_REQUEST_TIMEOUT_S, TOP_SILENT_AFTER_S
from cbctl.runtime.messages import (
    ClusterInfoRequest,
    ControlResponse,
    StoreStatsRequest,
    StoreStatsResponse,
    SupervisorRequest,
    unpack,
)
from cbctl.runtime.metrics import merge_histograms, percentile_us
from cbctl.runtime.process import new_socket
from cbctl.runtime.redis_store import url as redis_url
from cbctl.runtime.store_client import connect_store

#: Version of the ``--json`` snapshot; bumped only when a documented field changes meaning or goes away.
SNAPSHOT_VERSION = 1
SORT_KEYS = ("util", "calls", "name")
EXECUTOR_STATES = ("ready", "backoff", "draining", "silent", "starting", "dead")


# --- asking the cluster ------------------------------------------------------------------------------------


class ClusterProbe:
    """Sends one status request to the supervisor, every scheduler and the store, all at once, and
    collects what comes back before a deadline. Only a silent supervisor (or a missing cluster) is fatal:
    a scheduler or store that does not answer (restarting, say) leaves its part of the snapshot empty."""

    def __init__(self, home: Path, timeout_s: float = TOP_REQUEST_TIMEOUT_S) -> None:
        self.home = home
        self.timeout_s = timeout_s
        self._context = auth.new_context(None)  # the cluster's keys are set at the first snapshot (a TCP cluster)
        self._cluster_started_at: float | None = None
        self._sockets: dict[str, zmq.Socket] = {}  # by address; kept across snapshots
        self._watches: dict[str, auth.HandshakeWatch | None] = {}  # by address: did it refuse our keys?
        self._ids = itertools.count(1)
        self._redis: Any = None  # a RedisStoreClient, for a cluster whose store is Redis

    def _socket(self, address: str) -> zmq.Socket:
        sock = self._sockets.get(address)
        if sock is None:
            sock = self._sockets[address] = new_socket(self._context, zmq.DEALER)
            self._watches[address] = auth.watch_handshakes(sock, address)
            auth.connect(sock, address)
        return sock

    def collect(self) -> dict[str, Any]:
        """The raw answers: ``{"home", "supervisor", "schedulers": {name: info or None}, "store"}``."""
        found = cluster.running_cluster(self.home)
        if found.started_at != self._cluster_started_at:  # the first snapshot, or a new cluster in the home
            self._forget_sockets()  # a new TCP cluster has new keys: sockets made with the old ones never connect
            self._context.curve_keys = auth.cluster_keys(self.home, found.auth)
            self._cluster_started_at = found.started_at
        req_id = next(self._ids)
        scheduler_names = {p.address: f"{p.role}-{p.index}" for p in found.processes if p.role == "scheduler"}
        on_redis = redis_url.is_store_url(found.store_address)  # no store process: INFO from Redis itself
        asked: dict[str, str] = {found.control_address: "supervisor"}
        if not on_redis:
            asked[found.store_address] = "store"
        for address in found.scheduler_addresses:
            asked[address] = scheduler_names.get(address, address)
        self._socket(found.control_address).send(SupervisorRequest(req_id, "status").pack())
        if not on_redis:
            self._socket(found.store_address).send(StoreStatsRequest(req_id).pack())
        for address in found.scheduler_addresses:
            self._socket(address).send(ClusterInfoRequest(req_id).pack())
        answers: dict[str, Any] = {}
        poller = zmq.Poller()
        for address in asked:
            poller.register(self._sockets[address], zmq.POLLIN)
        by_socket = {self._sockets[a]: a for a in asked}
        deadline = time.monotonic() + self.timeout_s
        while len(answers) < len(asked):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            events = poller.poll(min(250, int(remaining * 1000) + 1))
            if not events and not (self.home / cluster.CLUSTER_FILE).exists():
                break  # `cbctl down` finished while we waited: say so now, not at the deadline
            for sock, _ in events:
                while True:
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        reply = unpack(frame)
                    except ProtocolError:
                        continue
                    if getattr(reply, "req_id", None) != req_id:
                        continue  # a late answer to an earlier snapshot
                    if isinstance(reply, ControlResponse):
                        answers[by_socket[sock]] = reply.payload if reply.ok else None
                    elif isinstance(reply, StoreStatsResponse):
                        answers[by_socket[sock]] = reply.stats
        if answers.get(found.control_address) is None:
            cluster.running_cluster(self.home)  # gone meanwhile (`cbctl down` finished)? say that instead
            watch = self._watches.get(found.control_address)
            if watch is not None and watch.refused():
                raise auth.keys_refused(found.control_address, self.home)
            raise ClusterNotRunning(f"the supervisor of the cluster in {self.home} (pid {found.supervisor_pid}) "
                                    f"did not answer within {self.timeout_s:.0f} s: it is stopping or stuck, "
                                    "see `cbctl logs supervisor`")
        return {
            "home": str(self.home),
            "supervisor": answers[found.control_address],
            "schedulers": {asked[a]: answers.get(a) for a in found.scheduler_addresses},
            "store": self._redis_stats(found) if on_redis else answers.get(found.store_address),
        }

    def _redis_stats(self, found: cluster.ClusterFile) -> dict[str, Any] | None:
        """The store row from Redis INFO (None when Redis does not answer within the snapshot's timeout)."""
        if self._redis is None:
            try:
                self._redis = connect_store(self._context, redis_url.resolve_address(self.home, found.store_address),
                                            "top", request_timeout_s=self.timeout_s, retry_budget_s=0.0)
            except CbctlError:
                return None
        try:
            return self._redis.stats()
        except CbctlError:
            return None

    def _forget_sockets(self) -> None:
        for watch in self._watches.values():
            if watch is not None:
                watch.close()
        self._watches.clear()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def close(self) -> None:
        self._forget_sockets()
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        self._context.term()

    def __enter__(self) -> ClusterProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the snapshot: plain data, the --json format ---------------------------------------------------------


def build_snapshot(raw: Mapping[str, Any], now: float | None = None) -> dict[str, Any]:
    """The documented snapshot (README, "cbctl top --json") from ``ClusterProbe.collect``'s answers."""
    supervisor = raw["supervisor"]
    schedulers: Mapping[str, Any] = raw["schedulers"]
    answered = [info for info in schedulers.values() if info]
    processes = supervisor["processes"]
    statuses = _freshest_statuses(answered)
    backoff = set().union(*(_backoff_ids(info.get("policy")) for info in answered)) if answered else set()

    executors = [_executor_row(p, statuses.get(p["name"]), backoff) for p in processes if p["role"] == "executor"]
    executors.sort(key=lambda e: _natural(e["id"]))

    registry_functions: dict[str, Any] = {}
    registry_dags: dict[str, list[str]] = {}
    name_calls: dict[str, int] = {}
    name_rates: dict[str, float] = {}
    for info in answered:
        registry_functions.update(info.get("registry", {}).get("functions", {}))
        registry_dags.update(info.get("registry", {}).get("dags", {}))
        for name, count in info.get("name_calls", {}).items():
            name_calls[name] = name_calls.get(name, 0) + count
        for name, rate in info.get("name_rates", {}).items():
            name_rates[name] = name_rates.get(name, 0.0) + rate
    functions = _function_rows(executors, statuses, registry_functions)
    dags = [{"name": name, "functions": members, "calls": name_calls.get(name, 0),
             "calls_per_s": name_rates.get(name, 0.0)} for name, members in sorted(registry_dags.items())]

    scheduler_rows = []
    for name, info in sorted(schedulers.items(), key=lambda item: _natural(item[0])):
        process = next((p for p in processes if p["name"] == name), {})
        counters, rates = (info or {}).get("counters", {}), (info or {}).get("rates", {})
        scheduler_rows.append({
            "id": name, "pid": process.get("pid"), "state": process.get("state", "unknown"), "answered": bool(info),
            "calls": counters.get("calls"), "dag_calls": counters.get("dag_calls"),
            "dispatch_errors": counters.get("dispatch_errors"),
            "calls_per_s": rates.get("calls"), "dag_calls_per_s": rates.get("dag_calls"),
            "dispatch_errors_per_s": rates.get("dispatch_errors"),
            "in_flight": (info or {}).get("in_flight"),
        })

    store = raw.get("store")
    return {
        "version": SNAPSHOT_VERSION,
        "time": time.time() if now is None else now,
        "home": raw.get("home") or supervisor.get("home"),
        "uptime_s": supervisor.get("uptime_s"),
        "processes": {"total": len(processes), "up": sum(1 for p in processes if p["state"] == "ready"),
                      "restarts": sum(p["restarts"] for p in processes)},
        "totals": {
            "calls": _sum(s["calls"] for s in scheduler_rows) + _sum(s["dag_calls"] for s in scheduler_rows),
            "calls_per_s": _sum(s["calls_per_s"] for s in scheduler_rows)
            + _sum(s["dag_calls_per_s"] for s in scheduler_rows),
            "dag_calls_per_s": _sum(s["dag_calls_per_s"] for s in scheduler_rows),
            "errors_per_s": _sum(e["errors_per_s"] for e in executors)
            + _sum(s["dispatch_errors_per_s"] for s in scheduler_rows),
            # every scheduler sees every executor, so their estimates agree: take one, do not add them
            "in_flight": max((s["in_flight"] for s in scheduler_rows if s["in_flight"] is not None), default=None),
        },
        "schedulers": scheduler_rows,
        "executors": executors,
        "functions": functions,
        "dags": dags,
        "store": None if store is None else {
            "backend": store.get("backend", "embedded"),
            "keys": store.get("keys"), "bytes": store.get("bytes"), "log_bytes": store.get("log_bytes"),
            "snapshot_bytes": store.get("snapshot_bytes"), "ops_per_s": store.get("ops_per_s"),
            "gets": store.get("gets"), "puts": store.get("puts"), "deletes": store.get("deletes"),
        },
        "policy": answered[0].get("policy") if answered else None,
    }


def _sum(values: Any) -> float:
    return sum(v for v in values if v is not None)


def _natural(name: str) -> tuple[str, int]:
    """``executor-10`` after ``executor-9``."""
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def _freshest_statuses(answered: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each executor's most recent status among the schedulers that answered (all receive every status)."""
    best: dict[str, dict[str, Any]] = {}
    for info in answered:
        for executor_id, status in info.get("executors", {}).items():
            if executor_id not in best or status.get("status_age_s", 1e9) < best[executor_id].get("status_age_s", 1e9):
                best[executor_id] = status
    return best


def _backoff_ids(policy: Any) -> set[str]:
    """Executors the policy is backing off from. The policy owns its ``describe()`` format; this reads
    the shapes it may take (a top-level ``backoff`` collection, or a per-executor flag or state)."""
    found: set[str] = set()
    if not isinstance(policy, Mapping):
        return found
    for key in ("backoff", "in_backoff", "executors_in_backoff"):
        value = policy.get(key)
        if isinstance(value, (Mapping, list, tuple, set)):
            found.update(str(v) for v in value)
    views = policy.get("executors")
    if isinstance(views, Mapping):
        for executor_id, view in views.items():
            if isinstance(view, Mapping) and (view.get("backoff") or view.get("in_backoff")
                                              or view.get("state") == "backoff"):
                found.add(str(executor_id))
    return found


def _executor_row(process: Mapping[str, Any], status: Mapping[str, Any] | None, backoff: set[str]) -> dict[str, Any]:
    if status is not None and status.get("pid") != process["pid"]:
        status = None  # from the incarnation before a restart
    metrics: Mapping[str, Any] = (status or {}).get("metrics") or {}
    age = status.get("status_age_s") if status else None
    state = process["state"]
    if state in ("restarting", "failed", "stopped"):
        state = "dead"
    elif state == "stopping" or (status is not None and not status.get("running", True)):
        state = "draining"
    elif state == "ready" and status is None:
        state = "starting"
    elif state == "ready" and age is not None and age > TOP_SILENT_AFTER_S:
        state = "silent"
    elif state == "ready" and process["name"] in backoff:
        state = "backoff"
    interval = metrics.get("interval_s") or 0.0
    fresh = status is not None and state != "dead"
    return {
        "id": process["name"],
        "type": process.get("executor_type") or (status or {}).get("executor_type") or "cpu",
        "pid": process["pid"],
        "state": state,
        "utilization": status.get("utilization") if fresh else None,
        "busy": metrics.get("busy") if fresh else None,
        "cpu_percent": metrics.get("cpu_percent", process.get("cpu_percent")) if fresh else process.get("cpu_percent"),
        "rss_bytes": metrics.get("rss_bytes", process.get("rss_bytes")) if fresh else process.get("rss_bytes"),
        "gpu": metrics.get("gpu") if fresh else None,
        "pinned": list(status.get("pinned", [])) if fresh else [],
        "queue": status.get("queue_length") if fresh else None,
        "calls": metrics.get("calls") if fresh else None,
        "errors": metrics.get("errors") if fresh else None,
        "calls_per_s": metrics["interval_calls"] / interval if fresh and interval and "interval_calls" in metrics
        else None,
        "errors_per_s": metrics["interval_errors"] / interval if fresh and interval and "interval_errors" in metrics
        else None,
        "p50_us": metrics.get("p50_us") if fresh else None,
        "p99_us": metrics.get("p99_us") if fresh else None,
        "restarts": process["restarts"],
        "status_age_s": age,
    }


def _function_rows(executors: list[dict[str, Any]], statuses: Mapping[str, Mapping[str, Any]],
                   registry_functions: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    histograms: dict[str, list[Any]] = {}

    def row(name: str) -> dict[str, Any]:
        if name not in rows:
            gpu = registry_functions.get(name, {}).get("gpu") if name in registry_functions else None
            rows[name] = {"name": name, "gpu": gpu, "calls": 0, "errors": 0, "calls_per_s": 0.0,
                          "errors_per_s": 0.0, "p50_us": None, "p99_us": None, "queue": 0, "pinned_on": [],
                          "ran_on": {}}
            histograms[name] = []
        return rows[name]

    for name in registry_functions:
        row(name)
    for executor in executors:
        if executor["utilization"] is None:  # no current status: nothing to count
            continue
        metrics = statuses[executor["id"]].get("metrics") or {}
        interval = metrics.get("interval_s") or 0.0
        for name in executor["pinned"]:
            row(name)["pinned_on"].append(executor["id"])
        for name, m in (metrics.get("functions") or {}).items():
            r = row(name)
            r["calls"] += m.get("calls", 0)
            r["errors"] += m.get("errors", 0)
            r["queue"] += m.get("queue", 0)
            if interval:
                r["calls_per_s"] += m.get("interval_calls", 0) / interval
                r["errors_per_s"] += m.get("interval_errors", 0) / interval
            if m.get("calls"):
                r["ran_on"][executor["id"]] = m["calls"]
            histograms[name].append(m.get("hist") or [])
    for name, r in rows.items():
        merged = merge_histograms(histograms[name])
        r["p50_us"], r["p99_us"] = percentile_us(merged, 0.5), percentile_us(merged, 0.99)
    return [rows[name] for name in sorted(rows)]


def health(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a snapshot ``cbctl status --json`` adds under ``health``."""
    states = {state: 0 for state in EXECUTOR_STATES}
    for executor in snapshot["executors"]:
        states[executor["state"]] = states.get(executor["state"], 0) + 1
    utilizations = [e["utilization"] for e in snapshot["executors"] if e["utilization"] is not None]
    return {
        "processes": snapshot["processes"], "totals": snapshot["totals"], "executor_states": states,
        "utilization_mean": sum(utilizations) / len(utilizations) if utilizations else None,
        "utilization_max": max(utilizations, default=None), "store": snapshot["store"],
        "schedulers_not_answering": [s["id"] for s in snapshot["schedulers"] if not s["answered"]],
    }


def take_snapshot(home: Path, timeout_s: float = TOP_REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """One snapshot of the cluster in ``home`` (``ClusterNotRunning`` when there is none)."""
    with ClusterProbe(home, timeout_s) as probe:
        return build_snapshot(probe.collect())


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


def store_text(snapshot: Mapping[str, Any]) -> Text:
    store = snapshot["store"]
    if store is None:
        return Text("store  not answering", style="bold red")
    backend = store.get("backend", "embedded")
    label = "store" if backend == "embedded" else f"store ({backend})"
    return Text(f"{label}  {_na(store['keys'])} keys  {format_bytes(store['bytes'])}  "
                f"log {format_bytes(store['log_bytes'])}  {_na(store['ops_per_s'], '{:.1f}')} ops/s")


def health_lines(snapshot: Mapping[str, Any]) -> list[Text]:
    """The health summary ``cbctl status`` prints: the header, executor states and load, the store."""
    summary = health(snapshot)
    states = ", ".join(f"{count} {state}" for state, count in summary["executor_states"].items() if count)
    load = Text(f"executors  {states or 'none'}  utilization mean "
                f"{_na(summary['utilization_mean'], '{:.0%}')} max {_na(summary['utilization_max'], '{:.0%}')}")
    return [header_text(snapshot), load, store_text(snapshot)]


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
    columns = [("id", "left", True), ("type", "left", True), ("pid", "right", False),
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
            "id": e["id"], "type": e["type"].upper(), "pid": str(e["pid"]),
            "utilization": utilization_bar(e["utilization"], 10 if wide else 6),
            "call/dag/pin%": "n/a" if not busy else "/".join(f"{busy.get(a, 0) * 100:.0f}"
                                                             for a in ("call", "dag", "pin")),
            "CPU%": _na(e["cpu_percent"], "{:.0f}"), "RSS": format_bytes(e["rss_bytes"]), "GPU": _gpu_cell(e),
            "pinned": ", ".join(e["pinned"]) or "-", "queue": _na(e["queue"]),
            "calls/s": _na(e["calls_per_s"], "{:.1f}"), "p50": format_duration_us(e["p50_us"]),
            "p99": format_duration_us(e["p99_us"]), "restarts": str(e["restarts"]),
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
    parts: list[Any] = [header_text(snapshot), executors_table(snapshot, sort, wide=width >= WIDE_COLUMNS),
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
