"""One snapshot of the cluster, as ``cbctl top`` and ``cbctl status`` show it: ``ClusterProbe`` asks every
process kind at once, with one short deadline (the supervisor: processes, pids, restarts; every scheduler:
executor statuses with their metrics, call rates, policy state; the store: keys, bytes, log size, ops/s), and
``build_snapshot`` turns the answers into the stable JSON documented in the README ("cbctl top --json").
Plain data only: ``top.py`` renders it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zmq

from cbctl.errors import ClusterNotRunning, ProtocolError
from cbctl.runtime import cluster
from cbctl.runtime.defaults import TOP_REQUEST_TIMEOUT_S, TOP_SILENT_AFTER_S, TOP_SORT_KEYS
from cbctl.runtime.metrics import merge_histograms, percentile_us
from cbctl.runtime.process import new_socket
from cbctl.runtime.wire import auth
from cbctl.runtime.wire.messages import (
    ClusterInfoRequest,
    ControlResponse,
    StoreStatsRequest,
    StoreStatsResponse,
    SupervisorRequest,
    unpack,
)

#: Version of the ``--json`` snapshot; bumped only when a documented field changes meaning or goes away.
#: Version of the ``--json`` snapshot; bumped only when a documented field changes meaning or goes away.
SNAPSHOT_VERSION = 1
SORT_KEYS = TOP_SORT_KEYS
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
        asked: dict[str, str] = {found.control_address: "supervisor", found.store_address: "store"}
        for address in found.scheduler_addresses:
            asked[address] = scheduler_names.get(address, address)
        self._socket(found.control_address).send(SupervisorRequest(req_id, "status").pack())
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
            "store": answers.get(found.store_address),
        }

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
    executors.sort(key=lambda e: (e["host"] not in (None, supervisor.get("host")), _natural(e["id"])))

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
    hosts = _host_rows(executors, supervisor)
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
        "hosts": hosts,
        "functions": functions,
        "dags": dags,
        "store": None if store is None else {
            "keys": store.get("keys"), "bytes": store.get("bytes"), "log_bytes": store.get("log_bytes"),
            "snapshot_bytes": store.get("snapshot_bytes"), "ops_per_s": store.get("ops_per_s"),
            "gets": store.get("gets"), "puts": store.get("puts"), "deletes": store.get("deletes"),
            "ephemeral_keys": store.get("ephemeral_keys"), "ephemeral_bytes": store.get("ephemeral_bytes"),
        },
        "policy": answered[0].get("policy") if answered else None,
        "autoscale": supervisor.get("autoscale"),
    }


def _host_rows(executors: list[dict[str, Any]], supervisor: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per host (the head first, then joined hosts by name): its executors by state, their mean utilization and
    calls/s, and for a joined host the age of its node supervisor's last heartbeat (null for the head)."""
    head = supervisor.get("host")
    heartbeats = {h["host"]: h.get("heartbeat_age_s") for h in supervisor.get("hosts", [])}
    names = [head] if head is not None else []
    names += sorted({e["host"] for e in executors if e["host"] not in names} | set(heartbeats) - set(names))
    rows = []
    for name in names:
        mine = [e for e in executors if e["host"] == name]
        utilizations = [e["utilization"] for e in mine if e["utilization"] is not None]
        states: dict[str, int] = {}
        for e in mine:
            states[e["state"]] = states.get(e["state"], 0) + 1
        rows.append({"host": name, "head": name == head, "executors": len(mine), "states": states,
                     "utilization_mean": sum(utilizations) / len(utilizations) if utilizations else None,
                     "calls_per_s": _sum(e["calls_per_s"] for e in mine),
                     "heartbeat_age_s": heartbeats.get(name)})
    return rows


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
        "host": process.get("host"),  # the head's --listen host (or hostname), or the joined host's name
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
        "recycles": process.get("recycles", 0),
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
        "hosts": snapshot["hosts"],
    }


def take_snapshot(home: Path, timeout_s: float = TOP_REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """One snapshot of the cluster in ``home`` (``ClusterNotRunning`` when there is none)."""
    with ClusterProbe(home, timeout_s) as probe:
        return build_snapshot(probe.collect())
