"""How a Cloudburst DAG becomes a cbctl DAG (pure: names and edges in, names and edges out).

Two Cloudburst behaviours are had by adding registered helper functions (``user_library.py``) to the DAG,
all named under ``HELPER_PREFIX`` and hidden from ``CloudburstConnection.list()``:

- MULTIEXEC ``(name, invalid_results)``: the function runs as a cbctl multi-exec function (once per upstream
  result, as each arrives), followed by a ``first-valid`` helper that passes on the first result, in arrival
  order, that is not one of ``invalid_results``. Cloudburst forwarded each valid result as it came and the
  next function ran on the first to arrive; cbctl gathers a multi-exec function's results before its
  successor runs, so the successor starts once every run finished, not at the first valid one.
- ``call_dag(..., output_key=K)`` and ``call_dag(..., continuation=C)``: a second DAG, registered on first use,
  with a source that receives the call's ``CallTail`` (K, C) and a sink that joins the DAG's result with it,
  puts the result under K (Cloudburst's executor wrote it there) and hands the call on to C with
  ``cbctl.Continue`` (Cloudburst's scheduler called C with the result).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cbctl import InvalidDag

HELPER_PREFIX = "cloudburst-compat/"
TAIL_SOURCE = HELPER_PREFIX + "tail-source"
TAIL = HELPER_PREFIX + "tail"


def first_valid_name(dag: str, function: str) -> str:
    return f"{HELPER_PREFIX}{dag}/first-valid/{function}"


def tail_dag_name(dag: str) -> str:
    return f"{HELPER_PREFIX}{dag}/tail"


def is_helper(name: str) -> bool:
    return name.startswith(HELPER_PREFIX)


@dataclass
class DagShape:
    functions: list[str]
    edges: list[list[str]]
    multiexec: list[str] = field(default_factory=list)
    #: first-valid helper name -> (the MULTIEXEC function it follows, that function's invalid results)
    filters: dict[str, tuple[str, list[Any]]] = field(default_factory=dict)


def function_names(functions: Sequence[Any]) -> list[str]:
    """The names in a Cloudburst ``functions`` list, whose entries are names or ``(name, invalid_results)``."""
    return [entry[0] if isinstance(entry, tuple) else entry for entry in functions]


def from_cloudburst(dag: str, functions: Sequence[Any], connections: Sequence[Sequence[str]]) -> DagShape:
    """The cbctl DAG for Cloudburst's ``register_dag(dag, functions, connections)``."""
    invalid: dict[str, list[Any]] = {}
    for entry in functions:
        if isinstance(entry, tuple):
            if len(entry) != 2:
                raise InvalidDag(f"DAG {dag!r}: a MULTIEXEC entry is (name, invalid_results), got {entry!r}")
            invalid[entry[0]] = list(entry[1])
    helper = {fn: first_valid_name(dag, fn) for fn in invalid}
    edges = [[helper.get(a, a), b] for a, b in connections] + [[fn, helper[fn]] for fn in invalid]
    return DagShape(function_names(functions) + list(helper.values()), edges, sorted(invalid),
                    {helper[fn]: (fn, invalid[fn]) for fn in invalid})


def chain_if_no_edges(functions: Sequence[str], edges: Sequence[Sequence[str]]) -> list[list[str]]:
    """``edges``, or the chain through ``functions`` when there are none (as cbctl reads a DAG without edges)."""
    if edges or len(functions) < 2:
        return [list(e) for e in edges]
    return [[a, b] for a, b in zip(functions, functions[1:])]


def sink_of(dag: str, functions: Sequence[str], edges: Sequence[Sequence[str]]) -> str:
    sinks = [f for f in functions if not any(a == f for a, _ in edges)]
    if len(sinks) != 1:
        raise InvalidDag(f"DAG {dag!r} has {len(sinks)} sinks ({', '.join(sinks)}): an output_key or a continuation "
                         "needs exactly one")
    return sinks[0]


def sources_of(functions: Sequence[str], edges: Sequence[Sequence[str]]) -> list[str]:
    return [f for f in functions if not any(b == f for _, b in edges)]


def with_tail(dag: str, functions: Sequence[str], edges: Sequence[Sequence[str]]) -> tuple[list[str],
                                                                                            list[list[str]]]:
    """The functions and edges of ``dag`` called with an output key or a continuation (see the module docstring)."""
    edges = chain_if_no_edges(functions, edges)
    sink = sink_of(dag, functions, edges)
    return [*functions, TAIL_SOURCE, TAIL], [*edges, [sink, TAIL], [TAIL_SOURCE, TAIL]]
