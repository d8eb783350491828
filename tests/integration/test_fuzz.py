"""Fuzzing every server socket of a real cluster: random bytes, random msgpack values and mutations of valid
frames of every message kind (tests/fuzz_frames.py), with multipart envelopes on the ROUTER sockets, sent for a
bounded time to the store, each scheduler, each executor and the supervisor's control and ready sockets.
Afterwards every process is the one that started (no restart), each one's rejected-frame counter rose, the
cluster still serves a DAG call, a put/get and `cbctl status`, and no log holds a traceback.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import msgpack
import psutil
import zmq
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from cbctl.errors import ProtocolError
from cbctl.runtime import cluster
from cbctl.runtime.defaults import PROTOCOL_VERSION, REJECTED_FRAME_LOG_PER_S
from cbctl.runtime.wire import serialization
from cbctl.runtime.wire.messages import (
    CallRequest,
    ClusterInfoRequest,
    ControlResponse,
    DagTrigger,
    ExecutorStatus,
    GetRequest,
    PutRequest,
    StoreStatsRequest,
    SupervisorRequest,
    unpack,
)
from tests.conftest import EXAMPLES, RunningCluster
from tests.fuzz_frames import deep, hostile_frames, pack_array, seed_frames

#: Wall-clock bound of the sending phase, whatever hypothesis would still like to try (about 450 frames a second
#: here); CBCTL_FUZZ_SECONDS runs it longer by hand, the suite keeps it short.
FUZZ_SECONDS = float(os.environ.get("CBCTL_FUZZ_SECONDS", "12"))
MAX_EXAMPLES = 1000
MARKER = 2**62 + 17  # the req_id of the requests that tell the fuzzed frames were all read


def _overrides(home: Path, found: cluster.ClusterFile) -> dict[str, dict[str, Any]]:
    """Real names and addresses for the seeds, so their mutations reach deep into the handlers; but nothing a
    surviving mutation could use to stop the cluster (no stop or scale command, no removal of a real name)."""
    executors = [p.address for p in found.processes if p.role == "executor"]
    nowhere = cluster.ipc_address(home, "fuzz-nowhere")  # bound by nobody: sends there queue and are dropped
    replies = cluster.ipc_address(home, "fuzz-replies")
    args = serialization.encode([3])
    return {
        "CallRequest": {"call_id": "fuzz-call", "name": "pipeline", "args": args, "response_address": replies,
                        "consistency": "lww"},
        "ContinueCall": {"call_id": "fuzz-cont", "name": "pipeline", "args": args, "response_address": replies,
                         "consistency": "lww", "depth": 1},
        "DagTrigger": {"call_id": "fuzz-trigger", "dag": "pipeline", "function": "increment",
                       "locations": {"increment": executors[0], "sq": executors[-1]}, "versions": {},
                       "edges": [["increment", "sq"]], "source": "", "payload": args,
                       "response_address": replies, "consistency": "lww", "extras": {}},
        "ExecutorStatus": {"executor_id": "executor-99", "address": nowhere, "executor_type": "cpu",
                           "running": False, "pid": 1},
        "ExecutorLeaving": {"executor_id": "executor-99", "address": nowhere, "heir_address": ""},
        "PinRequest": {"function": "increment", "version": 0, "scheduler_address": found.scheduler_addresses[0]},
        "UnpinRequest": {"function": "fuzz-nothing"},
        "PutRequest": {"key": "fuzz/k", "lattice": ["lww", 1, "fuzz", b"v", False]},
        "DeleteRequest": {"key": "fuzz/k", "writer": "fuzz"},
        "GetRequest": {"keys": ["fuzz/k"]},
        "SubscribeRequest": {"subscriber": "fuzz", "address": nowhere, "keys": ["fuzz/k"]},
        "RegisterDag": {"name": "fuzzdag", "functions": ["increment", "sq"], "edges": []},
        "RemoveRequest": {"name": "fuzz-nothing"},
        "AddTrigger": {"name": "fuzztrigger", "prefix": "fuzz/", "function": "fuzz-nothing"},
        "RemoveTrigger": {"name": "fuzz-nothing"},
        "SupervisorRequest": {"command": "status"},
        "ProcessReady": {"role": "executor", "index": 99, "pid": 1, "address": nowhere},
        "VersionRequest": {"reply_to": nowhere},
        "DirectMessage": {"body": serialization.encode("hello")},
    }


class Targets:
    """One socket per server socket of the cluster; ROUTER servers get a DEALER (whose replies are drained and
    ignored), executors a PUSH."""

    def __init__(self, found: cluster.ClusterFile, ready_address: str) -> None:
        self.context = zmq.Context()
        self.sockets: list[tuple[str, zmq.Socket]] = []
        self.sent: collections.Counter[str] = collections.Counter()
        routers = [("store", found.store_address), ("supervisor", found.control_address)]
        routers += [(f"scheduler-{i}", a) for i, a in enumerate(found.scheduler_addresses)]
        for name, address in routers:
            self._add(name, zmq.DEALER, address)
        for p in found.processes:
            if p.role == "executor":
                self._add(f"executor-{p.index}", zmq.PUSH, p.address)
        self._add("supervisor-ready", zmq.PUSH, ready_address)  # where children report ready

    def _add(self, name: str, kind: int, address: str) -> None:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.SNDTIMEO, 2000)
        sock.connect(address)
        self.sockets.append((name, sock))

    def send(self, index: int, envelope: list[bytes], frames: list[bytes]) -> None:
        name, sock = self.sockets[index]
        self.sent[name] += len(frames)
        for frame in frames:
            if sock.type == zmq.DEALER:
                sock.send_multipart([*envelope, frame])  # the server reads the last part, replies with the rest
                while sock.poll(0):
                    sock.recv_multipart()
            else:
                sock.send(frame)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until each ROUTER server has read everything sent to it: a request on the same connection,
        answered only after the frames before it (executors are waited for by their frames_received metric)."""
        markers = {"store": StoreStatsRequest(MARKER), "supervisor": SupervisorRequest(MARKER, "status")}
        deadline = time.monotonic() + timeout_s
        for name, sock in self.sockets:
            if sock.type != zmq.DEALER:
                continue
            sock.send((markers.get(name) or ClusterInfoRequest(MARKER)).pack())
            while True:
                remaining = deadline - time.monotonic()
                assert remaining > 0 and sock.poll(int(remaining * 1000)), f"{name} did not answer in {timeout_s} s"
                try:
                    reply = unpack(sock.recv_multipart()[-1])
                except ProtocolError:
                    continue  # a reply to a fuzzed envelope may be anything
                if getattr(reply, "req_id", None) == MARKER:
                    break

    def close(self) -> None:
        for _, sock in self.sockets:
            sock.close()
        self.context.term()


def harmless(frame: bytes) -> bool:
    """Not a valid request to stop or scale the cluster (a well-typed fuzzed frame may be one, by chance)."""
    try:
        message = unpack(frame)
    except ProtocolError:
        return True
    return not (isinstance(message, SupervisorRequest) and message.command in ("stop", "scale"))


def ask(address: str, message: Any, timeout_s: float = 10.0) -> Any:
    """One request to a ROUTER server on a fresh DEALER; the reply's payload."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        sock.send(message.pack())
        assert sock.poll(int(timeout_s * 1000)), f"no reply from {address} within {timeout_s} s"
        reply = unpack(sock.recv_multipart()[-1])
        assert isinstance(reply, ControlResponse) and reply.ok, reply
        return reply.payload
    finally:
        sock.close()


def rejected_counts(handle: RunningCluster) -> dict[str, int]:
    """Every server's rejected-frame counter, each read from the server itself."""
    found = handle.cluster_file()
    client = handle.client()
    counts = {"store": client.store_stats()["protocol_errors"],
              "supervisor": ask(found.control_address, SupervisorRequest(1, "status"))["protocol_errors"]}
    for i, address in enumerate(found.scheduler_addresses):
        info = ask(address, ClusterInfoRequest(1))
        counts[f"scheduler-{i}"] = info["counters"]["protocol_errors"]
        for executor_id, status in info["executors"].items():
            if executor_id.startswith("executor-"):
                counts[executor_id] = max(counts.get(executor_id, 0), status["metrics"]["protocol_errors"])
    return counts


def frames_received(handle: RunningCluster) -> dict[str, int]:
    info = ask(handle.cluster_file().scheduler_addresses[0], ClusterInfoRequest(1))
    return {e: s["metrics"]["frames_received"] for e, s in info["executors"].items() if e.startswith("executor-")}


def tracebacks_in_logs(home: Path) -> dict[str, str]:
    found = {}
    for path in sorted((home / "logs").glob("*.log")):
        text = path.read_text(errors="replace")
        if "Traceback" in text:
            start = text.index("Traceback")
            found[path.name] = text[max(0, start - 300): start + 1500]
    return found


def test_fuzzing_every_server_socket_kills_nothing_and_is_counted(start_cluster):
    handle = start_cluster(executors=2, extra_args=("--schedulers", "2"))
    handle.cli("deploy", str(EXAMPLES / "pipeline.py"), check=True)
    found = handle.cluster_file()
    pids = handle.pids()
    before = rejected_counts(handle)
    received_before = frames_received(handle)
    seeds = seed_frames(_overrides(handle.home, found))
    executors = [p.address for p in found.processes if p.role == "executor"]
    nowhere = cluster.ipc_address(handle.home, "fuzz-nowhere")
    replies_address = cluster.ipc_address(handle.home, "fuzz-replies")
    # a PULL where fuzzed calls reply, so their results do not pile up in the executors' queues
    replies = zmq.Context.instance().socket(zmq.PULL)
    replies.setsockopt(zmq.LINGER, 0)
    replies.bind(replies_address)
    targets = Targets(found, cluster.ipc_address(handle.home, "supervisor-ready"))
    deadline = time.monotonic() + FUZZ_SECONDS
    sent = itertools.count()

    envelopes = st.lists(st.binary(max_size=12), max_size=3)

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    # half the examples go to every socket: each generated frame then tests every server
    @given(target=st.one_of(st.just(-1), st.integers(0, len(targets.sockets) - 1)), envelope=envelopes,
           frames=st.lists(hostile_frames(seeds).filter(harmless), min_size=1, max_size=12))
    # regressions, sent to every target: frames the fuzzer found that once crashed, hung or tracebacked a server
    @example(target=-1, envelope=[], frames=[
        msgpack.packb([PROTOCOL_VERSION, CallRequest.KIND, *[5] * len(CallRequest._FIELDS)]),
        msgpack.packb([PROTOCOL_VERSION, PutRequest.KIND, 1, 5, 5]),
        msgpack.packb([PROTOCOL_VERSION, SupervisorRequest.KIND, "x", 5, 5]),
        msgpack.packb([PROTOCOL_VERSION, ExecutorStatus.KIND, "e", "a", "cpu", True, [], "busy", 0, [], 1, {}]),
        msgpack.packb([PROTOCOL_VERSION, DagTrigger.KIND, "c", "d", "f", "x", {}, [], "", b"", "", False, "lww", {}]),
        pack_array([msgpack.packb(PROTOCOL_VERSION), msgpack.packb(GetRequest.KIND), msgpack.packb(1), deep(5000)]),
        b"",
    ])
    # a trigger whose extras have the wrong shape: once failed its step after the function ran (an executor's
    # timer then crashed it, sending to a holder address that was an int)
    @example(target=-1, envelope=[], frames=[
        DagTrigger("fuzz-x", "pipeline", "increment", {"increment": executors[0], "sq": executors[-1]}, {},
                   [["increment", "sq"]], "", serialization.encode([3]), replies_address, False, "lww", extras).pack()
        for extras in ({"rh": [1]}, {"rh": 5}, {"mx": "x"}, {"w": [1]}, {"rr": {"k": 5}}, {"s": {"k": [1]}})
    ])
    # a status whose pid is well-typed but no pid (issue 13): it reached psutil on the scheduler's timer a second
    # later and ended every scheduler that received it
    @example(target=-1, envelope=[], frames=[
        msgpack.packb([PROTOCOL_VERSION, ExecutorStatus.KIND, executor_id, address, "cpu", True, [], 0.0, 0, [], pid,
                       {}])
        for pid in (-1, 0, 2**40, -33538) for executor_id, address in (("executor-0", executors[0]),
                                                                       ("executor-99", nowhere))
    ])
    def fuzz(target: int, envelope: list[bytes], frames: list[bytes]) -> None:
        if time.monotonic() > deadline:
            return
        for index in (range(len(targets.sockets)) if target < 0 else (target,)):
            targets.send(index, envelope, frames)
            for _ in frames:
                next(sent)
        while replies.poll(0):
            replies.recv()

    fuzz_started = time.monotonic()
    try:
        fuzz()
        targets.flush()  # every frame read before the checks
        handle.wait_for(lambda: all(frames_received(handle)[e] >= received_before[e] + targets.sent[e]
                                    for e in received_before), timeout=30, interval=0.5,
                        what="the executors to read every fuzzed frame")
    finally:
        targets.close()
        replies.close()
    total = next(sent)
    print(f"fuzz: {total} frames sent, per socket {dict(targets.sent)}; rejected before: {before}")
    assert total > 500, "the fuzzer sent too few frames to mean anything"

    # no process died or was restarted
    assert handle.pids() == pids and all(psutil.pid_exists(pid) for pid in pids)
    status = json.loads(handle.cli("status", "--json", check=True).stdout)
    assert all(p["restarts"] == 0 and p["state"] == "ready" for p in status["processes"]), status["processes"]
    # every server counted what it rejected (the executors' counters arrive with their next status report)
    handle.wait_for(lambda: all(rejected_counts(handle)[name] > count for name, count in before.items()),
                    timeout=15, what=f"every rejected-frame counter to rise above {before}")
    # and still serves
    client = handle.client()
    assert [client.call("pipeline", i, timeout=15) for i in range(5)] == [(i + 1) ** 2 for i in range(5)]
    assert client.call("diamond", 5, timeout=15) == 25
    client.put("after-fuzz", {"ok": True})
    assert client.get("after-fuzz") == {"ok": True}
    assert handle.cli("call", "pipeline", "3", check=True).stdout.strip() == "16"
    assert tracebacks_in_logs(handle.home) == {}
    # the logs did not grow with the flood: warnings about rejected frames are rate-limited
    limit = REJECTED_FRAME_LOG_PER_S * (time.monotonic() - fuzz_started + 2)
    for path in (handle.home / "logs").glob("*.log"):
        warnings = sum(1 for line in path.read_text(errors="replace").splitlines() if " WARNING " in line)
        assert warnings <= limit, f"{path.name}: {warnings} warning lines for {targets.sent} frames sent"


def test_triggers_with_hostile_extras_are_answered_or_dropped_as_malformed(deployed):
    """The extras a trigger carries are read after the user's function ran: an entry of the wrong shape is refused
    where the trigger arrives (counted), and a wrong value deeper inside fails the call with an error, so the
    caller is answered; the executor stays up and logs no traceback."""
    found = deployed.cluster_file()
    executors = [p.address for p in found.processes if p.role == "executor"]
    context = zmq.Context.instance()
    replies = context.socket(zmq.PULL)
    replies.setsockopt(zmq.LINGER, 0)
    address = cluster.ipc_address(deployed.home, "hostile-replies")
    replies.bind(address)
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(executors[0])
    pids = deployed.pids()
    before = rejected_counts(deployed)["executor-0"]
    sent = {}
    try:
        values = [5, "x", [1], [[1]], {"k": 5}, {"k": [1]}, {"k": {"a": "b"}}, None, -1]
        keys = ["s", "w", "rr", "rh", "c", "mx", "depth"]
        for n, (key, value, mode) in enumerate(itertools.product(keys, values, ["lww", "repeatable_read", "causal"])):
            call_id = f"hostile-{n}"
            sent[call_id] = (key, value, mode)
            push.send(DagTrigger(call_id, "pipeline", "increment", {"increment": executors[0], "sq": executors[-1]},
                                 {}, [["increment", "sq"]], "", serialization.encode([3]), address, False, mode,
                                 {key: value}).pack())
        answered = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            dropped = rejected_counts(deployed)["executor-0"] - before
            if len(answered) + dropped >= len(sent):
                break
            while replies.poll(200):
                answered.add(unpack(replies.recv()).call_id)
    finally:
        push.close()
        replies.close()
    dropped = rejected_counts(deployed)["executor-0"] - before
    assert len(answered) + dropped == len(sent), (len(answered), dropped, len(sent))
    assert deployed.pids() == pids
    assert deployed.client().call("pipeline", 3, timeout=15) == 16
    assert tracebacks_in_logs(deployed.home) == {}
