"""How a Cloudburst DAG becomes a cbctl DAG (pure: names and edges in, names and edges out).

Three Cloudburst behaviours are had by adding registered helper functions (``user_library.py``) to the DAG,
all named under ``HELPER_PREFIX`` and hidden from ``CloudburstConnection.list()``:

- MULTIEXEC ``(name, invalid_results)``: the function runs as a cbctl multi-exec function (once per upstream
  result, as each arrives), followed by a ``first-valid`` helper that passes on the first result, in arrival
  order, that is not one of ``invalid_results``. Cloudburst forwarded each valid result as it came and the
  next function ran on the first to arrive; cbctl gathers a multi-exec function's results before its
  successor runs, so the successor starts once every run finished, not at the first valid one.
- ``call_dag(..., output_key=K)`` and ``call_dag(..., continuation=C)``: a variant of the DAG with a source that
  receives the call's ``CallTail`` (K, C) and a sink that joins the DAG's result with it, puts the result under
  K (Cloudburst's executor wrote it there) and hands the call on to C with ``cbctl.Continue`` (Cloudburst's
  scheduler called C with the result).
- an ``arg_map`` entry for a function that is not a source (Cloudburst passed such fixed arguments first, then
  the upstream results): a variant with a ``fixed-args`` source for each such function, whose edge into it comes
  first, so its result (the arguments, as a tuple that the function's body spreads) is its first input.

A variant is a DAG of its own, named by what it adds (``variant_name``), registered on first use.
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


def fixed_args_name(dag: str, function: str) -> str:
    return f"{HELPER_PREFIX}{dag}/fixed-args/{function}"


def variant_name(dag: str, fixed: Sequence[str] = (), tail: bool = False) -> str:
    """The DAG a call of ``dag`` goes to, with fixed arguments for the inner functions ``fixed`` and a tail."""
    parts = ([f"args={','.join(sorted(fixed))}"] if fixed else []) + (["tail"] if tail else [])
    return f"{HELPER_PREFIX}{dag}/{'+'.join(parts)}" if parts else dag


def variant_prefix(dag: str) -> str:
    """What the names of every helper and variant of ``dag`` start with."""
    return f"{HELPER_PREFIX}{dag}/"


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


def variant(dag: str, functions: Sequence[str], edges: Sequence[Sequence[str]], fixed: Sequence[str] = (),
            tail: bool = False) -> tuple[list[str], list[list[str]]]:
    """The functions and edges of ``variant_name(dag, fixed, tail)`` (see the module docstring)."""
    edges = chain_if_no_edges(functions, edges)
    functions = list(functions)
    sources = sources_of(functions, edges)
    for function in fixed:
        if function not in functions:
            raise InvalidDag(f"arguments given for {function!r}, which is not a function of DAG {dag!r} "
                             f"(its functions: {', '.join(functions)})")
        if function in sources:
            raise InvalidDag(f"{function!r} is a source of {dag!r}: its arguments go to it directly")
    helpers = [fixed_args_name(dag, function) for function in sorted(fixed)]
    # first: a function's inputs come in the order of its incoming edges, and the fixed arguments lead
    edges = [[h, f] for h, f in zip(helpers, sorted(fixed))] + edges
    functions += helpers
    if tail:
        sink = sink_of(dag, functions, edges)
        functions += [TAIL_SOURCE, TAIL]
        edges += [[sink, TAIL], [TAIL_SOURCE, TAIL]]
    return functions, edges
