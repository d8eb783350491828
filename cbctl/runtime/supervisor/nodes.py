"""The head's table of joined hosts (``cbctl join``): which hosts take part, their executors, and which went
silent. Pure logic, driven by the head supervisor with heartbeats and a clock; no sockets here.

A host is alive while its node supervisor heartbeats (``NodeHeartbeat``, every ``NODE_HEARTBEAT_S``). After
``NODE_LOST_AFTER_S`` without one it is *lost*: the supervisor tells the schedulers that each of its executors
died, so their calls are dispatched again (at least once), and the host leaves the cluster file. A lost host's
node supervisor that heartbeats again (its link came back) is told so (``NodeAck`` not accepted) and starts its
executors afresh, as new processes: the schedulers ignore the old ones' statuses for good, and the host is
accepted again once its heartbeat names none of them. A heartbeat with
``leaving`` removes the host without declaring anything dead: its executors departed gracefully.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cbctl.runtime.cluster import ProcessEntry
from cbctl.runtime.wire.frames import is_address
from cbctl.runtime.wire.messages import ExecutorLost, NodeHeartbeat


@dataclass(frozen=True)
class NodeExecutor:
    """One executor of a joined host, as its heartbeat lists it."""

    index: int
    pid: int
    address: str
    executor_type: str
    state: str
    started_at: float
    restarts: int

    @classmethod
    def from_wire(cls, entry: list[Any]) -> NodeExecutor:
        index, pid, address, executor_type, state, started_at, restarts = entry
        if not (isinstance(index, int) and 0 <= index < 10**7 and isinstance(pid, int) and 0 <= pid <= 2**22
                and isinstance(address, str) and (address == "" or is_address(address))
                and executor_type in ("cpu", "gpu") and isinstance(state, str) and len(state) <= 16
                and isinstance(started_at, (int, float)) and isinstance(restarts, int)):
            raise ValueError(f"malformed executor entry {entry!r}")
        return cls(index, pid, address, executor_type, state, float(started_at), restarts)

    def executor_id(self, host: str) -> str:
        return f"{host}/executor-{self.index}"


@dataclass
class Node:
    host: str
    node_pid: int
    last_seen: float
    joined_at: float
    executors: list[NodeExecutor] = field(default_factory=list)
    max_executors: int = 0  # CPU executors it offers the head's autoscaler (`cbctl join --max-executors`)

    def cpu_executor_ids(self) -> list[str]:
        """The ids of its running CPU executors, as the schedulers' load reports name them."""
        return [e.executor_id(self.host) for e in self.executors if e.executor_type == "cpu" and e.address]


@dataclass
class NodeVerdict:
    """What the supervisor does with one heartbeat: answer it (``accepted``, ``reason``), rewrite the cluster
    file if the host's executors changed, and tell the schedulers of executors gone (``lost``)."""

    accepted: bool
    reason: str = ""
    changed: bool = False
    lost: list[ExecutorLost] = field(default_factory=list)


class NodeTable:
    def __init__(self, lost_after_s: float, head_host: str) -> None:
        self.lost_after_s = lost_after_s
        self.head_host = head_host
        self.nodes: dict[str, Node] = {}
        self.lost: dict[str, set[int]] = {}  # host -> pids of its executors when it was declared lost

    def on_heartbeat(self, beat: NodeHeartbeat, now: float) -> NodeVerdict:
        if beat.host == self.head_host:
            return NodeVerdict(False, f"host name {beat.host!r} is the head's own: join with another --advertise "
                                      "address (or --name)")
        executors = [NodeExecutor.from_wire(entry) for entry in beat.executors]
        node = self.nodes.get(beat.host)
        if node is not None and node.node_pid != beat.node_pid:
            if now - node.last_seen <= self.lost_after_s:
                return NodeVerdict(False, f"host {beat.host!r} has joined already (node supervisor pid "
                                          f"{node.node_pid}): run `cbctl leave` there first, or join under another "
                                          "name")
            verdict = NodeVerdict(True, changed=True, lost=self._lose(node))  # a restarted node replaces it
            node = None
        else:
            verdict = NodeVerdict(True)
        if node is None and beat.host in self.lost:
            if any(e.pid in self.lost[beat.host] for e in executors):
                return NodeVerdict(False, "lost: this host was silent too long and its calls went elsewhere; "
                                          "start its executors afresh")
            del self.lost[beat.host]  # none of the processes declared dead: it joins again
        if beat.leaving:
            if node is not None:
                del self.nodes[beat.host]
                verdict.changed = True
            return verdict
        if node is None:
            node = self.nodes[beat.host] = Node(beat.host, beat.node_pid, now, now)
            verdict.changed = True
        node.last_seen = now
        node.max_executors = beat.max_executors
        # an executor restarted by its node (new pid) lost its calls: the old process is told dead at once
        before = {e.index: e for e in node.executors}
        for executor in executors:
            old = before.get(executor.index)
            if old is not None and old.pid and old.pid != executor.pid and old.address:
                verdict.lost.append(ExecutorLost(old.executor_id(beat.host), old.address, old.pid,
                                                 "restarted on its host"))
        if [(e.index, e.pid, e.address, e.state) for e in executors] != \
                [(e.index, e.pid, e.address, e.state) for e in node.executors]:
            verdict.changed = True
        node.executors = executors
        return verdict

    def expire(self, now: float) -> list[tuple[str, list[ExecutorLost]]]:
        """The hosts silent past the bound, each with what to tell the schedulers; they leave the table."""
        gone = []
        for host, node in list(self.nodes.items()):
            if now - node.last_seen > self.lost_after_s:
                gone.append((host, self._lose(node)))
        return gone

    def _lose(self, node: Node) -> list[ExecutorLost]:
        del self.nodes[node.host]
        self.lost[node.host] = {e.pid for e in node.executors if e.pid}
        reason = f"host {node.host} sent no heartbeat for {self.lost_after_s:g} s"
        return [ExecutorLost(e.executor_id(node.host), e.address, e.pid, reason)
                for e in node.executors if e.pid and e.address]

    def capacities(self) -> dict[str, int]:
        """The hosts that offer the autoscaler executors (``--max-executors``), with how many."""
        return {host: node.max_executors for host, node in self.nodes.items() if node.max_executors > 0}

    def process_entries(self) -> list[ProcessEntry]:
        """The joined hosts' executors, as the cluster file lists them."""
        return [ProcessEntry("executor", e.index, e.pid, e.address, e.started_at, e.restarts, e.executor_type,
                             host=node.host)
                for node in self.nodes.values() for e in node.executors if e.address]

    def status(self, now: float) -> list[dict[str, Any]]:
        """Per host: its node's pid and heartbeat age, and its executors as ``cbctl status`` lists processes."""
        return [{"host": node.host, "node_pid": node.node_pid, "heartbeat_age_s": round(now - node.last_seen, 2),
                 "joined_s": round(now - node.joined_at, 1), "max_executors": node.max_executors,
                 "executors": [{"name": e.executor_id(node.host), "index": e.index, "pid": e.pid,
                                "address": e.address, "state": e.state, "executor_type": e.executor_type,
                                "started_at": e.started_at, "restarts": e.restarts} for e in node.executors]}
                for node in self.nodes.values()]
