"""``dag.parallel_branches``: which earlier functions of a DAG a function may run alongside (the scheduler
places it away from them, so a fan-out's branches run on different executors)."""

from cbctl.runtime.dag import chain_edges, chain_steps, parallel_branches


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


def test_chain_steps_are_the_steps_after_exactly_one_other_with_no_parallel_branch():
    functions = ["a", "b", "c"]
    assert chain_steps(functions, chain_edges(functions)) == {"b": "a", "c": "b"}
    # a fan-out: the branches run alongside each other (placed apart), the join has two inputs
    edges = [("split", "left"), ("split", "right"), ("left", "join"), ("right", "join")]
    assert chain_steps(["split", "left", "right", "join"], edges) == {}
    # a chain after a join is a chain again; a branch beside a longer branch is not
    edges = [("s", "p"), ("s", "q"), ("p", "j"), ("q", "j"), ("j", "tail"), ("tail", "end")]
    assert chain_steps(["s", "p", "q", "j", "tail", "end"], edges) == {"tail": "j", "end": "tail"}
    edges = [("s", "long1"), ("long1", "long2"), ("s", "short"), ("long2", "j"), ("short", "j")]
    assert chain_steps(["s", "long1", "long2", "short", "j"], edges) == {}
    assert chain_steps(["only"], []) == {}
