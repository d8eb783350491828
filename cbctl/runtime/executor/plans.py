"""A DAG's shape as an executor's per-step code needs it, worked out once per DAG instead of per step.

Every ``DagTrigger`` carries its DAG's edge list; each step needs its function's upstream functions (how many
triggers to wait for, in which order) and successors (where the result goes), and a failed step the joining
functions (those with several upstream ones). Scanning the edge list for each is a Python loop per step, and a
chain call's two steps on one executor pay it twice. ``Plans`` keeps, per DAG name, the edges it was worked out
from and the three lookups; a trigger whose edges are the same object (a successor made here) or equal (a
frame from the scheduler: one C-level comparison) reuses them. A DAG re-registered with other edges, or two
versions of it in flight at once, only costs recomputing: the comparison, not the name, decides.
"""

from __future__ import annotations

from collections.abc import Sequence

#: DAG shapes kept; past it the table starts again empty (a cluster with more DAGs than this in use at once
#: recomputes some shapes, as every step did before).
PLANS_KEPT = 256


class Shape:
    """One DAG's upstream functions (in edge order), successors and joining functions, by function."""

    __slots__ = ("edges", "upstream", "downstream", "joining")

    def __init__(self, edges: Sequence[Sequence[str]]) -> None:
        self.edges = edges
        upstream: dict[str, list[str]] = {}
        downstream: dict[str, list[str]] = {}
        for a, b in edges:
            upstream.setdefault(b, []).append(a)
            downstream.setdefault(a, []).append(b)
        self.upstream = upstream
        self.downstream = downstream
        self.joining = frozenset(fn for fn, ups in upstream.items() if len(ups) > 1)


class Plans:
    """Shapes by DAG name, bounded (``PLANS_KEPT``). Only the executor's thread uses it."""

    def __init__(self, limit: int = PLANS_KEPT) -> None:
        self.limit = limit
        self._shapes: dict[str, Shape] = {}

    def shape(self, dag: str, edges: Sequence[Sequence[str]]) -> Shape:
        """The shape of ``edges`` (the edge list of DAG ``dag``)."""
        shape = self._shapes.get(dag)
        if shape is not None:
            if shape.edges is edges:
                return shape
            if shape.edges == edges:
                shape.edges = edges  # the next trigger made from this one (a local successor) matches by identity
                return shape
        shape = Shape(edges)
        if len(self._shapes) >= self.limit:
            self._shapes.clear()
        self._shapes[dag] = shape
        return shape
