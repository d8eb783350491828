"""The executor's per-step shortcuts: DAG shapes worked out once per DAG (plans.py), and load observations that
skip an unchanged one-step state (stealing.py), each checked against the straightforward computation."""

from __future__ import annotations

import collections
import random
from types import SimpleNamespace

from cbctl.runtime.dag import downstream_of, upstream_of
from cbctl.runtime.executor.plans import Plans, Shape
from cbctl.runtime.executor.stealing import LoadEdges, WorkSharing
from cbctl.runtime.wire.messages import DagTrigger, ExecutorLoad, unpack


def test_a_shape_lists_upstream_in_edge_order_successors_and_joins():
    edges = [["a", "c"], ["b", "c"], ["a", "d"], ["c", "e"], ["d", "e"], ["x", "e"]]
    shape = Shape(edges)
    for fn in "abcdex":
        assert shape.upstream.get(fn, []) == upstream_of(edges, fn)
        assert shape.downstream.get(fn, []) == downstream_of(edges, fn)
    assert shape.joining == {"c", "e"}


def test_plans_reuse_a_shape_for_the_same_edges_and_recompute_for_changed_ones():
    plans = Plans(limit=3)
    first = plans.shape("d", [["a", "b"]])
    assert plans.shape("d", [["a", "b"]]) is first  # equal edges (a new frame's): reused
    assert plans.shape("d", first.edges) is first  # the same list (a successor made here): reused
    changed = plans.shape("d", [["a", "b"], ["c", "b"]])  # the DAG registered again with other edges
    assert changed is not first and changed.joining == {"b"}
    assert plans.shape("d", [["a", "b"]]).joining == frozenset()  # and back: still right, not stale
    for name in ("e", "f", "g", "h"):  # past the bound the table starts again, and stays correct
        assert plans.shape(name, [[name, "z"]]).downstream == {name: ["z"]}
    assert len(plans._shapes) <= 3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Socket:
    """Stands in for a scheduler DEALER: keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, frame: bytes, flags: int = 0) -> None:
        self.sent.append(frame)


def trigger(call: str, function: str = "f") -> DagTrigger:
    return DagTrigger(call, "", function, {function: "a"}, {function: 1}, [], "", b"", "r", False, "lww", {})


def test_skipped_observations_send_exactly_the_reports_every_observation_would():
    """Random sequences of queue changes and observations (as the loop and serve_while_busy make them), with
    the clock moving: the shortcut must send the same reports, at the same points, as asking LoadEdges every
    time (what the code did before)."""
    for seed in range(40):
        rng = random.Random(seed)
        clock = Clock()
        executor = SimpleNamespace(ready=collections.deque(), functions={}, executor_id="executor-0",
                                   address="ipc://e0", scheduler_sockets=[Socket()])
        sharing = WorkSharing(executor, load_reports=True)
        sharing.edges = LoadEdges(0.01, burst=2, clock=clock)
        reference = LoadEdges(0.01, burst=2, clock=clock)
        expected: list[tuple[int, bool, str]] = []
        calls = 0
        for _ in range(300):
            action = rng.random()
            if action < 0.3:
                calls += 1
                executor.ready.append((trigger(f"c{calls}"), [trigger(f"c{calls}")]))
                sharing.last_call = f"c{calls}"
            elif action < 0.5 and executor.ready:
                executor.ready.popleft()
            elif action < 0.6:
                clock.now += rng.choice((0.0005, 0.003, 0.02))
            else:
                running = 1 if rng.random() < 0.2 else 0
                force = rng.random() < 0.05
                sharing.observe(running, force=force)
                load = running + len(executor.ready)
                movable = load >= 2 and any(True for _ in list(executor.ready)[max(1 - running, 0):])
                if reference.observe(load, movable, sharing.last_call, force):
                    expected.append((load, movable, sharing.last_call))
        sent = [unpack(frame) for frame in executor.scheduler_sockets[0].sent]
        assert all(type(m) is ExecutorLoad for m in sent)
        assert [(m.load, m.movable, m.last_call) for m in sent] == expected, seed
