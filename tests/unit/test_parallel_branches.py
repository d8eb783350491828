"""``dag.parallel_branches``: which earlier functions of a DAG a function may run alongside (the scheduler
places it away from them, so a fan-out's branches run on different executors)."""

from cbctl.runtime.dag import chain_edges, parallel_branches


def test_a_chain_has_nothing_in_parallel():
    functions = ["a", "b", "c"]
    assert parallel_branches(functions, chain_edges(functions)) == {"a": (), "b": (), "c": ()}


def test_diamond_branches_are_parallel_to_each_other_only():
    edges = [("split", "left"), ("split", "right"), ("left", "join"), ("right", "join")]
    assert parallel_branches(["split", "left", "right", "join"], edges) == {
        "split": (), "left": (), "right": ("left",), "join": ()}


def test_two_sources_are_parallel_and_a_deep_branch_stays_parallel():
    edges = [("x", "x2"), ("x2", "z"), ("y", "z")]
    assert parallel_branches(["x", "x2", "y", "z"], edges) == {"x": (), "x2": (), "y": ("x", "x2"), "z": ()}


def test_a_single_function_has_nothing_in_parallel():
    assert parallel_branches(["only"], []) == {"only": ()}
