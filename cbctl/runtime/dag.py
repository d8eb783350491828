"""DAG validation and shape (pure): which functions feed which, in what order, and where it ends.

A valid DAG names each function once, only registered functions, edges only between its own functions,
no cycle, and exactly one sink (the function whose result the caller receives). A function with several
upstream functions receives their results in the order its incoming edges were declared.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cbctl.errors import InvalidDag
from cbctl.runtime.defaults import MAX_DAG_EDGES, MAX_DAG_FUNCTIONS


@dataclass(frozen=True)
class DagShape:
    name: str
    functions: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]
    sources: tuple[str, ...]
    sink: str

    def upstream(self, function: str) -> list[str]:
        return upstream_of(self.edges, function)


def chain_edges(functions: Sequence[str]) -> list[tuple[str, str]]:
    """The edges of a linear pipeline: each function feeds the next."""
    return list(zip(functions, functions[1:]))


def upstream_of(edges: Iterable[Sequence[str]], function: str) -> list[str]:
    return [a for a, b in edges if b == function]


def downstream_of(edges: Iterable[Sequence[str]], function: str) -> list[str]:
    return [b for a, b in edges if a == function]


def validate_dag(name: str, functions: Sequence[str], edges: Sequence[Sequence[str]],
                 registered: Iterable[str], max_functions: int = MAX_DAG_FUNCTIONS,
                 max_edges: int = MAX_DAG_EDGES) -> DagShape:
    """Check a DAG and return its shape; raise ``InvalidDag`` naming the first problem found. The size limits
    are checked first, so an oversized DAG costs no more than counting it."""
    if not isinstance(name, str) or not name or name.startswith("__"):
        raise InvalidDag(f"DAG name {name!r} is invalid: use a non-empty name not starting with '__'")
    if not functions:
        raise InvalidDag(f"DAG {name!r} has no functions: list at least one")
    if len(functions) > max_functions:
        raise InvalidDag(f"DAG {name!r} has {len(functions)} functions, over the limit of {max_functions} per DAG: "
                         "split it into DAGs whose sinks hand on to the next with cbctl.Continue")
    if len(edges) > max_edges:
        raise InvalidDag(f"DAG {name!r} has {len(edges)} edges, over the limit of {max_edges} per DAG: "
                         "split it into DAGs whose sinks hand on to the next with cbctl.Continue")
    seen: set[str] = set()
    for fn in functions:
        if fn in seen:
            raise InvalidDag(f"DAG {name!r} uses function {fn!r} twice: register a copy under another name")
        seen.add(fn)
    known = set(registered)
    unknown = [fn for fn in functions if fn not in known]
    if unknown:
        raise InvalidDag(f"DAG {name!r} names unregistered function(s) {', '.join(map(repr, unknown))}: "
                         "register them first (in the same file for `cbctl deploy`)")
    pairs: list[tuple[str, str]] = []
    for edge in edges:
        if len(edge) != 2:
            raise InvalidDag(f"DAG {name!r} has an edge {edge!r} that is not a (from, to) pair")
        a, b = edge
        for end in (a, b):
            if end not in seen:
                raise InvalidDag(f"DAG {name!r} has an edge {a!r} -> {b!r} but {end!r} is not among its functions")
        if a == b:
            raise InvalidDag(f"DAG {name!r} has a cycle: {a!r} feeds itself")
        if (a, b) in pairs:
            raise InvalidDag(f"DAG {name!r} has the edge {a!r} -> {b!r} twice")
        pairs.append((a, b))
    order = topological_order(functions, pairs)
    if order is None:
        raise InvalidDag(f"DAG {name!r} has a cycle: a DAG's edges must not loop back")
    sinks = [fn for fn in functions if not downstream_of(pairs, fn)]
    if len(sinks) != 1:
        raise InvalidDag(f"DAG {name!r} has {len(sinks)} sinks ({', '.join(sinks)}): it needs exactly one "
                         "function whose result is the DAG's result")
    sources = tuple(fn for fn in functions if not upstream_of(pairs, fn))
    return DagShape(name, tuple(functions), tuple(pairs), sources, sinks[0])


def topological_order(functions: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[str] | None:
    """Kahn's algorithm; None when the edges contain a cycle."""
    indegree = {fn: 0 for fn in functions}
    for _, b in edges:
        indegree[b] += 1
    ready = [fn for fn in functions if indegree[fn] == 0]
    order: list[str] = []
    while ready:
        fn = ready.pop(0)
        order.append(fn)
        for b in downstream_of(edges, fn):
            indegree[b] -= 1
            if indegree[b] == 0:
                ready.append(b)
    return order if len(order) == len(functions) else None


def parallel_branches(functions: Sequence[str], edges: Iterable[Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """For each function, the functions listed before it that are neither upstream nor downstream of it
    (they may run at the same time). The scheduler places each function away from these, so a fan-out's
    branches run in parallel on different executors rather than queued on one."""
    edges = [tuple(e) for e in edges]
    reach: dict[str, set[str]] = {}

    def descendants(fn: str) -> set[str]:
        found = reach.get(fn)
        if found is None:
            found = reach[fn] = set()
            for b in downstream_of(edges, fn):
                found.add(b)
                found |= descendants(b)
        return found

    parallel: dict[str, tuple[str, ...]] = {}
    for i, fn in enumerate(functions):
        parallel[fn] = tuple(g for g in functions[:i] if g not in descendants(fn) and fn not in descendants(g))
    return parallel


def chain_steps(functions: Sequence[str], edges: Iterable[Sequence[str]],
                parallel: dict[str, tuple[str, ...]] | None = None) -> dict[str, str]:
    """The steps of a chain: each function that runs after exactly one other and alongside none of the DAG's
    (no parallel branch), with that one. When such a step can start, the executor that made its input has
    finished everything of the call so far, so the scheduler may place the step there (no hop between the two);
    a step with a parallel sibling is placed apart from it instead (``parallel_branches``: the two may wait for
    each other). ``parallel``: the DAG's ``parallel_branches``, when the caller has them already."""
    edges = [tuple(e) for e in edges]
    if parallel is None:
        parallel = parallel_branches(functions, edges)
    alongside = {g for fn in functions for g in parallel[fn]} | {fn for fn in functions if parallel[fn]}
    found = {}
    for fn in functions:
        upstream = upstream_of(edges, fn)
        if len(upstream) == 1 and fn not in alongside:
            found[fn] = upstream[0]
    return found
