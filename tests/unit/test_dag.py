"""DAG validation (pure): valid shapes are accepted with the right sources and sink; every invalid one is
refused with an InvalidDag that names the problem."""

from __future__ import annotations

import pytest

from cbctl.errors import InvalidDag
from cbctl.runtime.dag import chain_edges, topological_order, validate_dag

REGISTERED = {"a", "b", "c", "d", "e"}


def test_chain_is_accepted():
    shape = validate_dag("chain", ["a", "b", "c"], chain_edges(["a", "b", "c"]), REGISTERED)
    assert shape.sources == ("a",)
    assert shape.sink == "c"
    assert shape.edges == (("a", "b"), ("b", "c"))
    assert shape.upstream("c") == ["b"]


def test_single_function_is_accepted():
    shape = validate_dag("one", ["a"], [], REGISTERED)
    assert shape.sources == ("a",) and shape.sink == "a"


def test_diamond_is_accepted_and_keeps_upstream_order():
    edges = [("a", "b"), ("a", "c"), ("c", "d"), ("b", "d")]
    shape = validate_dag("diamond", ["a", "b", "c", "d"], edges, REGISTERED)
    assert shape.sources == ("a",)
    assert shape.sink == "d"
    assert shape.upstream("d") == ["c", "b"], "a fan-in receives its inputs in declared edge order"
    order = topological_order(shape.functions, list(shape.edges))
    assert order is not None and order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")


def test_several_sources_one_sink_is_accepted():
    shape = validate_dag("join", ["a", "b", "c"], [["a", "c"], ["b", "c"]], REGISTERED)
    assert shape.sources == ("a", "b") and shape.sink == "c"


@pytest.mark.parametrize(("functions", "edges", "message"), [
    (["a", "x"], [("a", "x")], r"unregistered function\(s\) 'x'"),
    (["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "a")], "has a cycle"),
    (["a", "b"], [("a", "b"), ("b", "a")], "has a cycle"),
    (["a", "b"], [("a", "a"), ("a", "b")], "cycle: 'a' feeds itself"),
    (["a", "b", "c"], [("a", "b"), ("a", "c")], r"has 2 sinks \(b, c\)"),
    (["a", "b"], [], r"has 2 sinks \(a, b\)"),
    (["a", "b", "a"], [("a", "b")], "uses function 'a' twice"),
    (["a", "b"], [("a", "b"), ("b", "c")], "'c' is not among its functions"),
    (["a", "b"], [("z", "b")], "'z' is not among its functions"),
    ([], [], "has no functions"),
    (["a", "b"], [("a", "b", "c")], "not a \\(from, to\\) pair"),
    (["a", "b"], [("a", "b"), ("a", "b")], "edge 'a' -> 'b' twice"),
], ids=["unknown-function", "cycle", "two-cycle", "self-loop", "two-sinks", "no-edges-two-sinks",
        "used-twice", "edge-to-outsider", "edge-from-outsider", "empty", "bad-edge", "duplicate-edge"])
def test_invalid_dags_name_the_problem(functions, edges, message):
    with pytest.raises(InvalidDag, match=message) as caught:
        validate_dag("bad", functions, edges, REGISTERED)
    assert "'bad'" in str(caught.value), "the error names the DAG"
    assert "\n" not in str(caught.value), "one-line errors"


@pytest.mark.parametrize("name", ["", "__cb/x", None])
def test_invalid_dag_names(name):
    with pytest.raises(InvalidDag, match="name"):
        validate_dag(name, ["a"], [], REGISTERED)


def test_topological_order_returns_none_on_cycle():
    assert topological_order(["a", "b"], [("a", "b"), ("b", "a")]) is None
    assert topological_order(["a", "b"], [("b", "a")]) == ["b", "a"]
